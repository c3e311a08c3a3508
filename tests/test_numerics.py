"""lipverify.numerics: the robust eigen-helpers, and numerical failures as clean errors.

The LAPACK failure that motivated it: scipy 1.17's ``evr`` driver raises
``LinAlgError: Internal Error`` on a repeated top eigenvalue. Each driver is made to fail here
on purpose, so the fallbacks are exercised whatever LAPACK the machine has.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
from click.testing import CliRunner

import lipverify
import lipverify.numerics as nm
from lipverify.errors import NumericalError, SolverError
from lipverify.ir.activations import SlopeRestricted

RELU = SlopeRestricted.named("relu")


def _failing_drivers(monkeypatch, failing: set[str]):
    """scipy.linalg.eigh whose named drivers raise like the broken LAPACK does."""
    real = scipy.linalg.eigh
    calls = []

    def eigh(a, *args, driver=None, **kwargs):
        calls.append(driver)
        if driver in failing:
            raise np.linalg.LinAlgError("Internal Error.")
        return real(a, *args, driver=driver, **kwargs)

    monkeypatch.setattr(nm.scipy.linalg, "eigh", eigh)
    return calls


def _spd(n: int, seed: int = 0, repeated: int = 3) -> np.ndarray:
    """Symmetric with a ``repeated``-fold top eigenvalue 7 and the rest in [1, 2]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    vals = np.concatenate([rng.uniform(1.0, 2.0, n - repeated), np.full(repeated, 7.0)])
    a = (q * vals) @ q.T
    return (a + a.T) / 2.0


@pytest.mark.parametrize("failing", [set(), {"evr"}, {"evr", "evd"}, {"evr", "evd", "ev"}])
def test_each_driver_falls_back_to_the_next(monkeypatch, failing):
    a = _spd(40)
    calls = _failing_drivers(monkeypatch, failing)
    assert nm.lambda_max(a) == pytest.approx(7.0, rel=1e-12)
    assert nm.lambda_min(a) >= 1.0 - 1e-12
    w, v = nm.eigh_top(a, 3)
    assert np.allclose(w, 7.0, rtol=1e-10)
    assert np.linalg.norm(a @ v - v * w) < 1e-9  # eigenvectors, also from Lanczos
    first = list(nm.DRIVERS[: len(failing) + 1])  # the first call's tries, in order
    assert calls[: len(first)] == first


def test_lobpcg_path_for_the_whole_spectrum(monkeypatch):
    """k >= n - 1 leaves Lanczos out; LOBPCG takes it, and its answer is residual-checked."""
    _failing_drivers(monkeypatch, set(nm.DRIVERS))
    a = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])
    w, _ = nm.eigh_range(a, 1, 11, vectors=True)
    assert np.allclose(w, np.arange(2.0, 13.0), rtol=1e-8)


def test_every_solver_failing_is_a_numerical_error(monkeypatch):
    _failing_drivers(monkeypatch, set(nm.DRIVERS))
    monkeypatch.setattr(nm, "_iterative", lambda *a: None)
    with pytest.raises(NumericalError, match=r"rho\*: every symmetric eigensolver failed.*evr"):
        nm.lambda_max(_spd(6), what="rho*")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_matrices_are_refused_with_a_message(bad):
    a = np.eye(3)
    a[1, 2] = a[2, 1] = bad
    with pytest.raises(NumericalError, match="NaN or Inf"):
        nm.lambda_max(a, what="top block")
    with pytest.raises(NumericalError, match="NaN or Inf"):
        nm.eigvalsh_batched(np.stack([a, np.eye(3)]))


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1.0, 1e150, 1e300])
def test_extreme_scales_are_exact_powers_of_two_away(scale):
    """Eigenvalues of 1e300 * A neither overflow inside LAPACK nor lose their digits."""
    a = _spd(12, seed=3) * scale
    assert nm.lambda_max(a) == pytest.approx(7.0 * scale, rel=1e-12)
    assert nm.lambda_min(a) == pytest.approx(np.linalg.eigvalsh(a / scale)[0] * scale, rel=1e-10)


def test_degenerate_spectra():
    assert nm.lambda_max(np.zeros((5, 5))) == 0.0
    assert nm.lambda_max(np.ones((6, 6))) == pytest.approx(6.0, rel=1e-14)  # rank one
    assert nm.lambda_max(np.eye(9)) == 1.0  # all equal
    assert nm.lambda_max(np.array([[4.0]])) == 4.0  # order one
    assert nm.eigvalsh_all(np.diag([3.0, 1.0, 2.0])).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("n", "lanczos"), [(600, True), (100, False)])
def test_iterative_lambda_max_equals_the_dense_value(monkeypatch, n, lanczos):
    """``iterative=True``: Lanczos above order 512 (the dense path below), same value."""
    import scipy.sparse.linalg as sla

    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n))
    a = (a + a.T) / 2.0
    dense = nm.lambda_max(a)
    calls = []
    eigsh = sla.eigsh
    monkeypatch.setattr(sla, "eigsh", lambda *args, **kw: calls.append(kw) or eigsh(*args, **kw))
    assert nm.lambda_max(a, iterative=True) == pytest.approx(dense, rel=1e-8)
    assert bool(calls) == lanczos

    def no_convergence(*args, **kw):
        raise sla.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((n, 0)))

    monkeypatch.setattr(sla, "eigsh", no_convergence)  # falls back to the dense path
    assert nm.lambda_max(a, iterative=True) == dense


def test_hermitian_batches_and_their_fallback(monkeypatch):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 4, 4)) + 1j * rng.standard_normal((5, 4, 4))
    herm = z @ np.conj(np.swapaxes(z, 1, 2))
    expect = np.linalg.eigvalsh(herm)
    assert np.allclose(nm.eigvalsh_batched(herm), expect)

    def broken(_):
        raise np.linalg.LinAlgError("batched failure")

    monkeypatch.setattr(nm.np.linalg, "eigvalsh", broken)
    assert np.allclose(nm.eigvalsh_batched(herm), expect, rtol=1e-10)


def test_rounding_and_machine_helpers():
    assert nm.round_up(1.0) == 1.0 + 2.0**-52 and nm.round_down(1.0) == 1.0 - 2.0**-53
    assert nm.gamma(1) == pytest.approx(2.0**-53, rel=1e-15)
    assert nm.physical_memory() > 2**28 and nm.cpu_count() >= 1
    with nm.blas_threads(1), nm.blas_threads(None):
        pass


def test_as_numerical_error_keeps_bugs_visible():
    assert isinstance(nm.as_numerical_error(FloatingPointError("overflow"), "x"), NumericalError)
    msg = "array must not contain infs or NaNs"
    assert isinstance(nm.as_numerical_error(ValueError(msg), "x"), NumericalError)
    assert nm.as_numerical_error(ValueError("bad shape"), "x") is None
    assert nm.as_numerical_error(TypeError("bug"), "x") is None


# ------------------------------------------------------------- failures inside a method
def _weights():
    rng = np.random.default_rng(5)
    return [rng.standard_normal((6, 4)), rng.standard_normal((6, 6)), rng.standard_normal((2, 6))]


def _net():
    return lipverify.Network.sequential(_weights(), [RELU, RELU])


def _break_smooth_solver(monkeypatch):
    import lipverify.methods.pipeline as pipeline

    def broken(*a, **k):
        raise np.linalg.LinAlgError("Internal Error.")

    monkeypatch.setattr(pipeline, "minimize_rho", broken)
    monkeypatch.setattr(pipeline, "use_ipm", lambda *a: False)


def test_a_failure_mid_solve_is_a_solver_error_with_the_best_certified_bound(monkeypatch):
    net = _net()
    fast = lipverify.bound(net, method="ldlt-fast")
    _break_smooth_solver(monkeypatch)
    with pytest.raises(NumericalError, match="LinAlgError: Internal Error") as info:
        lipverify.bound(net, method="lipsdp-neuron", solver="smooth")
    best = info.value.best
    assert isinstance(best, lipverify.BoundResult) and best.certified
    assert best.bound == pytest.approx(fast.bound, rel=1e-12)
    assert info.value.exit_code == 5


def test_auto_reports_the_best_certified_bound_and_says_so(monkeypatch):
    net = _net()
    fast = lipverify.bound(net, method="ldlt-fast")
    _break_smooth_solver(monkeypatch)
    r = lipverify.bound(net, method="auto", solver="smooth")
    assert r.certified and r.bound == pytest.approx(fast.bound, rel=1e-12)
    assert any("auto: lipsdp-neuron failed" in w for w in r.warnings)


def test_auto_falls_back_method_by_method(monkeypatch):
    """lipsdp-neuron and ldlt-fast both break: naive answers, and the result says why."""
    from lipverify.methods import METHODS, get_method

    get_method("naive")  # load the registry

    def broken(*a, **k):
        raise np.linalg.LinAlgError("Internal Error.")

    for name in ("lipsdp-neuron", "ldlt-fast"):
        monkeypatch.setitem(METHODS, name, replace(METHODS[name], fn=broken))
    net = _net()
    r = lipverify.bound(net, method="auto")
    naive = lipverify.bound(net, method="naive")
    assert r.method == "naive" and r.certified and r.bound == naive.bound
    assert r.details["auto_fallbacks"] == [
        "auto: ldlt-fast failed (method ldlt-fast: numerical failure (LinAlgError: "
        "Internal Error.))",
        "auto: lipsdp-neuron failed (method lipsdp-neuron: numerical failure (LinAlgError: "
        "Internal Error.))",
    ]
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive"]
    with pytest.raises(SolverError, match="method ldlt-fast: numerical failure"):
        lipverify.bound(net, method="ldlt-fast")


def test_cli_prints_the_error_and_best_bound_not_a_traceback(monkeypatch, tmp_path):
    from lipverify_cli.main import main

    path = tmp_path / "net.npz"
    np.savez(path, **{f"W{k}": w for k, w in enumerate(_weights(), start=1)})
    _break_smooth_solver(monkeypatch)
    res = CliRunner().invoke(main, ["bound", str(path), "-m", "lipsdp-neuron", "--solver",
                                    "smooth", "--no-lower", "--layout", "out-in"])
    assert res.exit_code == 5, res.output
    assert "Traceback" not in res.output
    assert "numerical failure (LinAlgError: Internal Error.)" in res.output
    assert "best certified bound found before the failure" in res.output
