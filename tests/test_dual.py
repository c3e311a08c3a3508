"""The optimality gap: a weak-duality lower bound on the LipSDP optimum (lipverify.solvers.gap)."""

from __future__ import annotations

import pytest
from conftest import shared_path

import lipverify

#: (file, load options, published LipSDP-Neuron optimum): see ../shared/models/README.md
CASES = [
    ("exlipbab_iris_4x6x6x3_relu.npz", {}, 11.635340),
    ("lyr2n80test1.npz", {"activation": "relu"}, 0.737257),
]


@pytest.mark.parametrize("name, opts, optimum", CASES)
def test_dual_lower_bound_brackets_the_published_optimum(name, opts, optimum):
    r = lipverify.bound(shared_path("weights", name), method="lipsdp-neuron", **opts)
    low = r.details["dual_lower"]
    assert r.certified and low is not None
    assert low <= optimum * (1 + 2e-6) and r.bound >= optimum * (1 - 2e-6)
    assert r.details["gap"] < 1e-3
    assert r.status.gap == r.details["gap"]


def _chain(widths, seed, activation=("relu",)):
    import numpy as np

    from lipverify.ir.activations import SlopeRestricted
    from lipverify.lmi.chain import ChainLMI

    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    net = lipverify.Network.sequential(ws, [SlopeRestricted.named(*activation)] * (len(ws) - 1))
    return net, ChainLMI.from_network(net)


@pytest.mark.parametrize(
    "activation", [("relu",), ("leaky_relu", 0.1), ("tanh",), ("slope", -0.5, 1.0)])
def test_repaired_bound_is_feasible_and_below_the_optimum_for_any_candidate(activation):
    """Weak duality needs no good candidate: random Z, repaired, stays below the optimum."""
    import numpy as np

    from lipverify.solvers.gap import _pre_maps, repair, repaired_bound
    from lipverify.solvers.interior import solve_chain_ipm

    net, lmi = _chain([6, 8, 8, 3], 1, activation)
    opt = solve_chain_ipm(lmi, tol=1e-9).rho
    rng = np.random.default_rng(0)
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    n0 = lmi.sizes[0]
    qc1 = lmi.qcs[0]
    for _ in range(40):
        # slopes in [alpha, beta] through the net (feasible), perturbed: the repair's work
        z = [rng.normal(size=(n0, 5))]
        for w in lmi.weights[:-1]:
            v = w @ z[-1]
            z.append(rng.uniform(qc1.alpha, qc1.beta, v.shape) * v
                     + 0.3 * rng.normal(size=v.shape) * np.abs(v))
        z = np.vstack(z)
        z0 = z.copy()
        y = repair(lmi, z)
        np.testing.assert_array_equal(z, z0)  # the caller's array is untouched
        assert y is not None  # scaling or blending always reaches a value >= 0
        # the input block only normalised, every QC value >= 0, the bound below the optimum
        np.testing.assert_allclose(y[:n0], z[:n0] / np.linalg.norm(z[:n0]), rtol=1e-14)
        for k, (qc, (v_map, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
            assert (qc.value_grad(v_map @ y[cols], y[offs[k]:offs[k + 1]]) >= 0).all()
        assert 0 <= repaired_bound(lmi, z) <= opt * (1 + 1e-9)
    for _ in range(40):  # and from noise with rows scaled over orders of magnitude
        z = rng.normal(size=(lmi.order, 5)) * np.exp(3 * rng.normal(size=(lmi.order, 1)))
        assert 0 <= repaired_bound(lmi, z) <= opt * (1 + 1e-9)


def test_gap_is_measured_where_the_eigenvector_sdp_alone_failed():
    """64-64x4-10 from the smooth solver: the candidate, repaired, closes the gap below 1e-3
    (it was unknown before: the penalty with the loose multiplier bounds failed)."""
    import math

    from lipverify.solvers.gap import gap
    from lipverify.solvers.sequential import ldlt_fast_params
    from lipverify.solvers.smooth_rho import minimize_rho

    net, lmi = _chain([64, 64, 64, 64, 64, 10], 0)
    p, rho, _ = minimize_rho(lmi, ldlt_fast_params(lmi))
    g = gap(lmi, p, rho)
    assert g["gap"] is not None and g["gap"] < 1e-3
    assert g["lower"] <= 3.61468 * (1 + 1e-5) <= math.sqrt(rho) * (1 + 1e-5)


def test_leaky_relu_gets_a_gap_from_the_repair_alone():
    """alpha > 0 has no multiplier bounds: the repaired candidate still gives a true bound."""
    from lipverify.solvers.interior import solve_chain_ipm

    net, lmi = _chain([8, 16, 16, 16, 4], 3, ("leaky_relu", 0.1))
    r = lipverify.bound(net, method="lipsdp-neuron", solver="smooth")
    opt = solve_chain_ipm(lmi, tol=1e-10).rho ** 0.5
    assert r.certified and r.details["gap"] is not None
    assert r.details["dual_lower"] <= opt * (1 + 1e-9) <= r.bound * (1 + 1e-9)
    assert r.details["gap"] < 1e-2
