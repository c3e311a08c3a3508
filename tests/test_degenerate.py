"""Degenerate spectra: every method x solver on tiny networks built to break eigen-solvers.

Orthogonal and permutation layers (every singular value equal), repeated singular values,
zero, rank-one and width-one layers, weights of 1e-150 and 1e150, identity nets, duplicated
neurons, GroupSort on exact permutations. Each run must end with a certified bound that is
sound (at least the exact constant where it is known, at least the sampled lower bound) or
with a clean ``LipverifyError``: never a raw exception, never a NaN or an infinity reported as
certified. The LAPACK failure behind this suite: scipy 1.17's ``evr`` driver raised
``LinAlgError: Internal Error`` on a repeated top eigenvalue (issue "Green on every fresh
machine"); :mod:`lipverify.numerics` now falls back through other drivers.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

import lipverify
from lipverify.errors import LipverifyError, NotApplicableError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.methods import list_methods

RELU = SlopeRestricted.named("relu")
TANH = SlopeRestricted.named("tanh")
#: The §8 certificate's smallest rho margin is absolute (rho* + 1e-12): a net whose constant
#: is below 1e-6 certifies 1e-6 at best through an LMI (the naive product has no such floor).
LMI_FLOOR = 1e-6 * (1 + 1e-5)
#: Where rho* = 0 (a zero layer) the margin search settles between 1e-12 and 1e-10 in rho.
ZERO_FLOOR = 1e-5

_RNG = np.random.default_rng(2026)
_Q6 = np.linalg.qr(_RNG.standard_normal((6, 6)))[0]
_P6 = np.eye(6)[[3, 1, 5, 0, 2, 4]]
_H4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
_A = _RNG.standard_normal((5, 4))
_B = _RNG.standard_normal((5, 5))
_C = _RNG.standard_normal((2, 5))


def _seq(ws, act=RELU):
    acts = act if isinstance(act, list) else [act] * (len(ws) - 1)
    return lipverify.Network.sequential(ws, acts)


#: name -> (network, exact Lipschitz constant when known, must every LMI method certify?)
NETS = {
    "orthogonal": (_seq([_Q6, _Q6.T, _Q6]), None, True),
    "permutation": (_seq([_P6, _P6.T, _P6]), 1.0, True),
    "identity": (_seq([np.eye(4)] * 3), 1.0, True),
    "hadamard-equal-sv": (_seq([_H4, 2 * _H4, _H4]), 2.0, True),
    "repeated-sv": (_seq([2 * _Q6, 2 * _Q6.T, _Q6[:2]], TANH), None, True),
    "all-ones-rank-one": (_seq([np.ones((4, 4))] * 3), 64.0, True),
    "rank-one": (_seq([np.outer(_A[:, 0], _A[0]), _B, _C]), None, True),
    "zero-layer": (_seq([_A, np.zeros((5, 5)), _C]), 0.0, False),
    "width-one": (_seq([_A[:1], _B[:, :1], _C[:1]]), None, True),
    "duplicated-neurons": (_seq([np.vstack([_A[:1], _A[:1], _A[2:]]), _B, _C]), None, True),
    "tiny-1e-150": (_seq([_A * 1e-150, _B * 1e-150, _C * 1e-150]), None, False),
    "one-layer-1e150": (_seq([_A * 1e150, _B, _C]), None, True),
    "1e150-and-1e-150": (_seq([_A * 1e150, _B * 1e-150, _C]), None, True),
    "overflowing-1e150-cubed": (_seq([_A * 1e150, _B * 1e150, _C * 1e150]), None, False),
    "two-layers-1e150": (_seq([_A * 1e150, _B * 1e150, _C]), None, False),
    "single-layer-orthogonal": (lipverify.Network.sequential([_Q6], []), 1.0, False),
    "groupsort2-permutation": (_seq([_P6, _P6.T, _P6], GroupSort(2)), 1.0, True),
    "groupsort-full-sort": (_seq([_P6, _Q6, _P6], GroupSort(6)), 1.0, True),
    "groupsort3-orthogonal": (_seq([_Q6, _Q6.T, _Q6], GroupSort(3)), 1.0, True),
}

SDP_SOLVERS = ("auto", "ipm", "smooth", "clarabel", "scs", "cvxopt", "mosek")
METHODS = [m.name for m in list_methods()] + ["auto"]
CASES = [
    (net, method, solver)
    for net in NETS
    for method in METHODS
    for solver in (SDP_SOLVERS if method in ("lipsdp-neuron", "lipsdp-layer") else ("auto",))
]
#: LMI methods that need not certify even on nice nets: the Gershgorin LP is often
#: infeasible (its docstring), the split product certifies segment by segment.
MAY_DECLINE = {"gershgorin-lmi", "lipsdp-wide",  # wide: one hidden layer only
               "lipsdp-spectral"}  # spectral: stride-1 conv chains only


@cache
def _run(net: str, method: str, solver: str, norm: str = "l2"):
    """The BoundResult, or the LipverifyError raised; any other exception fails the test."""
    network = NETS[net][0]
    try:
        return lipverify.bound(network, method=method, solver=solver, norm=norm)
    except LipverifyError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - the point of the suite
        pytest.fail(f"{net} / {method} / {solver}: raw {type(exc).__name__}: {exc}")


@cache
def _reference(net: str, norm: str = "l2") -> tuple[float, float]:
    """(certified naive bound, sampled lower bound) of a net."""
    naive = _run(net, "naive", "auto", norm)
    lower = _run(net, "lower", "auto", norm)
    n = naive.bound if isinstance(naive, lipverify.BoundResult) and naive.certified else math.inf
    low = lower.bound if isinstance(lower, lipverify.BoundResult) else 0.0
    return n, low


@pytest.mark.parametrize("net, method, solver", CASES, ids=["/".join(c) for c in CASES])
def test_certified_and_sound_or_a_clean_error(net, method, solver):
    network, exact, nice = NETS[net]
    out = _run(net, method, solver)
    if method == "lipsdp-network":
        assert isinstance(out, NotApplicableError) and "not sound" in str(out)
        return
    if isinstance(out, LipverifyError):
        assert str(out) and out.exit_code in (2, 4, 5)
        if solver == "mosek":
            return  # unlicensed here: a clean SolverError is the answer
        assert not (nice and method not in MAY_DECLINE and method != "lipsdp-channel"), (
            f"{method}/{solver} gave up on the benign net {net}: {out}")
        return
    r = out
    assert r.bound == r.bound, "NaN bound"  # noqa: PLR0124
    if r.kind == "upper" and r.certified:
        assert math.isfinite(r.bound) and r.bound >= 0.0
        naive, lower = _reference(net)
        assert r.bound >= lower * (1 - 1e-9), f"certified {r.bound} below the lower bound {lower}"
        if exact is not None:
            assert r.bound >= exact * (1 - 1e-9), f"certified {r.bound} below exact {exact}"
        floor = ZERO_FLOOR if exact == 0.0 else LMI_FLOOR
        if method.startswith("lipsdp") or method == "auto":
            assert r.bound <= max(naive, floor) * (1 + 1e-6), (r.bound, naive)
        if method == "ldlt-fast" and exact != 0.0:
            # ECLipsE-Fast's closed form has no curvature to scale by after a zero layer
            # (its multiplier there is arbitrary): certified, but not tight on such nets
            assert r.bound <= max(naive, floor) * (1 + 1e-6), (r.bound, naive)
    elif r.kind == "upper":
        assert not nice or method in MAY_DECLINE, f"{method}/{solver}: not certified on {net}"
        assert not math.isfinite(r.bound) or r.bound >= 0.0
    else:  # lower / estimate: finite where the arithmetic is, never above the naive bound
        naive, _ = _reference(net)
        if r.kind == "lower":
            assert r.bound <= naive * (1 + 1e-9)
            if exact is not None:
                assert r.bound <= exact * (1 + 1e-9) + 1e-300


@pytest.mark.parametrize("net", [n for n, (_, exact, _) in NETS.items() if exact is not None])
def test_exact_constants_are_reached(net):
    """Where the constant is exact, the best certified bound (LipSDP, or naive for a net with
    no hidden layer, where the LMI methods decline) is within 1e-6 of it."""
    network, exact, _ = NETS[net]
    r = _run(net, "lipsdp-neuron" if network.nodes else "naive", "auto")
    assert isinstance(r, lipverify.BoundResult) and r.certified
    assert r.bound <= max(exact, LMI_FLOOR if exact else ZERO_FLOOR) * (1 + 1e-6)


def test_scaled_weights_scale_the_bound():
    """One layer scaled by 1e150, or 1e150 and 1e-150 in two layers: the certified bound
    scales with the weights (power-of-two scaling inside is exact)."""
    plain = lipverify.bound(_seq([_A, _B, _C]), method="lipsdp-neuron")
    up = _run("one-layer-1e150", "lipsdp-neuron", "auto")
    both = _run("1e150-and-1e-150", "lipsdp-neuron", "auto")
    assert up.certified and up.bound == pytest.approx(plain.bound * 1e150, rel=1e-4)
    assert both.certified and both.bound == pytest.approx(plain.bound, rel=1e-4)
    naive = _run("one-layer-1e150", "naive", "auto")
    assert naive.bound == pytest.approx(
        lipverify.bound(_seq([_A, _B, _C]), method="naive").bound * 1e150, rel=1e-12)


def test_a_constant_beyond_float64_is_refused_not_certified():
    """1e150 in each of three layers: the constant is ~1e450. No method may certify a finite
    number; the LMI methods say why (exit 4), naive reports inf uncertified."""
    for method in ("lipsdp-neuron", "ldlt-fast", "ldlt"):
        out = _run("overflowing-1e150-cubed", method, "auto")
        assert isinstance(out, NotApplicableError) and "overflow float64" in str(out)
    naive = _run("overflowing-1e150-cubed", "naive", "auto")
    assert naive.bound == math.inf and not naive.certified
    auto = _run("overflowing-1e150-cubed", "auto", "auto")
    assert not auto.certified


def test_tiny_weights_certify_the_floor_or_better():
    """1e-150 per layer (constant ~1e-450): the naive product certifies a subnormal; the LMI
    methods certify no more than their absolute floor, and none reports 0 or NaN."""
    naive = _run("tiny-1e-150", "naive", "auto")
    assert naive.certified and 0.0 < naive.bound < 1e-300
    for method in ("lipsdp-neuron", "lipsdp-layer", "ldlt-fast", "auto"):
        r = _run("tiny-1e-150", method, "auto")
        assert r.certified and 0.0 < r.bound <= LMI_FLOOR


@pytest.mark.parametrize("net", ["orthogonal", "permutation", "zero-layer", "one-layer-1e150",
                                 "groupsort2-permutation"])
@pytest.mark.parametrize("method", ["naive", "gershgorin", "lipsdp-neuron", "lipsdp-layer",
                                    "lower"])
def test_linf_certified_and_sound_or_a_clean_error(net, method):
    out = _run(net, method, "auto", "linf")
    if isinstance(out, LipverifyError):
        assert net.startswith("groupsort") and method == "lipsdp-layer" or isinstance(
            out, NotApplicableError), out
        return
    naive, lower = _reference(net, "linf")
    if out.kind == "upper":
        assert out.certified and math.isfinite(out.bound)
        assert lower * (1 - 1e-9) <= out.bound <= naive * (1 + 1e-9)
    else:
        assert out.bound <= naive * (1 + 1e-9)


def test_the_float64_limit_of_lipsdp_is_where_it_was_measured():
    """One layer of 1e152 (rho ~ 2^1020.6) certifies, scaled exactly; 1e153 (2^1027.3) would
    overflow float64 and is refused with what to do."""
    rng = np.random.default_rng(2026)
    a, b, c = rng.standard_normal((5, 4)), rng.standard_normal((5, 5)), rng.standard_normal((2, 5))
    base = lipverify.bound(_seq([a, b, c]), method="lipsdp-neuron").bound
    r = lipverify.bound(_seq([a * 1e152, b, c]), method="lipsdp-neuron")
    assert r.certified and r.bound == pytest.approx(base * 1e152, rel=1e-6)
    with pytest.raises(NotApplicableError, match="overflow float64"):
        lipverify.bound(_seq([a * 1e153, b, c]), method="lipsdp-neuron")
