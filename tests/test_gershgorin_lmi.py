"""gershgorin-lmi: the scaled-Gershgorin LP on the LipSDP / residual LMI (FORMULATIONS.md §5)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from lipverify_cli.main import main
from test_residual import resnet

import lipverify
from lipverify.errors import NotApplicableError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.lmi.dag import DagLMI
from lipverify.methods import gershgorin_lmi as gl
from lipverify.status import Outcome

RELU = SlopeRestricted.named("relu")


def _chain(seed, dims=(4, 8, 7, 2), act=RELU):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1)]
    return lipverify.Network.sequential(ws, [act] * (len(dims) - 2))


def _residual(k):
    rng = np.random.default_rng(k)
    n, m = 6, 10
    blocks = [(rng.normal(size=(m, n)) / np.sqrt(n), rng.normal(size=(n, m)) / np.sqrt(m))
              for _ in range(k)]
    return resnet(blocks, rng, n, m)


def _sandwich(net):
    r = lipverify.bound(net, method="gershgorin-lmi")
    assert r.certified, r.status
    lower = lipverify.bound(net, method="lower").bound
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    assert sdp.certified
    assert lower <= r.bound
    assert sdp.bound <= r.bound * (1 + 1e-6)  # the SDP optimum is below any feasible point
    return r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chains_sandwich(seed):
    _sandwich(_chain(seed))


@pytest.mark.parametrize("k", [2, 3])
def test_random_residual_nets_sandwich(k):
    net = _residual(k)
    assert not net.is_sequential
    _sandwich(net)


def _coefficients_reconstruct(net):
    lmi = DagLMI.from_network(net)
    k, i, j, v = gl._param_coefficients(lmi)
    n_par = sum(lmi.param_sizes)
    p = lmi.project(np.random.default_rng(0).uniform(-1.0, 2.0, n_par))
    dm = np.zeros((lmi.order, lmi.order))
    np.add.at(dm, (i, j), v * p[k])
    dm += np.triu(dm, 1).T
    ref = lmi.assemble(p, 0.0)
    assert np.abs(lmi.assemble(np.zeros(n_par), 0.0) + dm - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("net", [
    _chain(0), _chain(1, act=SlopeRestricted.named("leaky_relu", 0.1)), _residual(2),
    _chain(2, dims=(4, 6, 6, 2), act=GroupSort(2)),
], ids=["relu", "leaky", "residual", "groupsort"])
def test_affine_decomposition_matches_assemble(net):
    """M(0, p) = M0 + sum_k p_k dM/dp_k, the data the LP is built from."""
    _coefficients_reconstruct(net)


def test_lp_solution_satisfies_scaled_gershgorin_and_the_lmi():
    net = _chain(1, act=SlopeRestricted.named("leaky_relu", 0.1))
    lmi = DagLMI.from_network(net)
    depth = np.arange(len(lmi.sizes), dtype=np.float64)
    best, info = gl.gershgorin_search(lmi, depth, max_lps=60)
    assert info["lp_outcomes"]["optimal"] > 0 and best["params"] is not None
    m = lmi.assemble(best["params"], best["rho"])
    d = np.concatenate([[1.0], 2.0 ** best["log_c"]])[np.repeat(np.arange(len(lmi.sizes)),
                                                                 lmi.sizes)]
    off = np.abs(m) @ d - np.abs(np.diag(m)) * d
    tol = 1e-7 * np.abs(m).max()
    assert (np.diag(m) * d - off >= -tol).all()  # m_ii d_i >= sum_j |m_ij| d_j (§5)
    assert np.linalg.eigvalsh(m)[0] >= -tol


@pytest.mark.parametrize("a, b, c", [
    ([2.0, -1.5, 1.2, -2.0], [0.5, 0.4, -0.3, 0.5], [3.0, 1.0, -2.0, 1.0]),  # scalings on grid
    ([1.7, -1.5, 1.2, -1.0], [0.6, 0.4, -0.3, 0.5], [3.0, 1.0, -2.0, 1.0]),  # found by search
])
def test_diagonal_chain_is_exact(a, b, c):
    """Decoupled scalar chains: L = max_i |a_i b_i c_i|, reached by LipSDP and by Gershgorin
    with c_1 = |a_i*|, c_2 = |a_i* b_i*| (the other coordinates are dominated)."""
    net = lipverify.Network.sequential([np.diag(a), np.diag(b), np.diag(c)], [RELU, RELU])
    exact = float(np.max(np.abs(np.array(a) * b * c)))
    r = lipverify.bound(net, method="gershgorin-lmi")
    sdp = lipverify.bound(net, method="lipsdp-neuron").bound
    assert r.certified and r.bound >= exact
    assert r.bound <= sdp * (1 + 1e-6) and sdp <= r.bound * (1 + 1e-6)
    assert r.bound <= exact * (1 + 1e-6)


def test_registered_api_and_certificate():
    assert "gershgorin-lmi" in {m.name for m in lipverify.list_methods()}
    assert "gershgorin-lmi" in CliRunner().invoke(main, ["methods"]).stdout
    net = lipverify.Network.sequential([np.diag([2.0, 1.0]), np.diag([0.5, 0.5]), np.eye(2)],
                                       [RELU, RELU])
    r = lipverify.bound(net, method="gershgorin-lmi")
    assert isinstance(r, lipverify.BoundResult)
    assert r.certified and r.kind == "upper" and r.method == "gershgorin-lmi"
    assert r.bound == pytest.approx(1.0, rel=1e-9) and r.solver_value is not None
    check = lipverify.check_certificate(net, lipverify.certify.files.certificate_dict(r))
    assert check.valid and check.bound >= r.bound * (1 - 1e-12)
    with pytest.raises(NotApplicableError):
        lipverify.bound(net, method="gershgorin-lmi", norm="linf")


def test_infeasible_everywhere_is_inf_not_certified():
    """Wide dense layers: the hidden rows need 2 c_1 > ||W_1 row||_1 and row sums of |W_2|
    that no node scaling can balance, so every LP is infeasible."""
    r = lipverify.bound(_chain(0, dims=(20, 80, 80, 5)), method="gershgorin-lmi")
    assert r.bound == np.inf and not r.certified
    assert r.status.outcome is Outcome.INFEASIBLE


def test_too_large_is_refused(monkeypatch):
    net = lipverify.Network.sequential([np.ones((gl.MAX_ORDER, 2)), np.ones((1, gl.MAX_ORDER))],
                                       [RELU])
    with pytest.raises(NotApplicableError, match="naive"):
        lipverify.bound(net, method="gershgorin-lmi")
    monkeypatch.setattr(gl, "MAX_COEF_NNZ", 10)
    with pytest.raises(NotApplicableError, match="naive"):
        lipverify.bound(_chain(0), method="gershgorin-lmi")
