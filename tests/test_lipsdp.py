"""LipSDP that certifies: published values, soundness, the §8 gate, l-infinity."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

import lipverify
from lipverify.certify.gate import certify_chain
from lipverify.errors import NotApplicableError
from lipverify.ir.activations import SlopeRestricted
from lipverify.lmi.chain import ChainLMI

RELU = SlopeRestricted.named("relu")


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_random_weights_mat_published_values():
    path = shared_path("weights", "random_weights.mat")
    net = lipverify.load(path)
    ws = [layer.weight.to_dense() for layer in net.chain()]
    exact = np.linalg.norm(ws[3] @ ws[2] @ ws[1] @ ws[0], 2)  # all weights positive: exact L
    neuron = lipverify.bound(net, method="lipsdp-neuron")
    assert neuron.certified and neuron.bound >= exact
    assert _rel(neuron.bound, 36.48223) < 1e-4
    layer = lipverify.bound(net, method="lipsdp-layer")
    assert layer.certified and _rel(layer.bound, 39.839) < 1e-4


def test_iris_exact_and_published():
    net = lipverify.load(shared_path("weights", "exlipbab_iris_4x6x6x3_relu.npz"))
    neuron = lipverify.bound(net, method="lipsdp-neuron")
    assert neuron.certified and neuron.bound >= 11.63435513
    assert _rel(neuron.bound, 11.635340) < 1e-4
    layer = lipverify.bound(net, method="lipsdp-layer")
    assert _rel(layer.bound, 12.812716) < 1e-4
    assert lipverify.bound(net, method="ldlt-fast").bound >= neuron.bound


@pytest.mark.parametrize(
    "activation, neuron_ref, layer_ref",
    [
        ("relu", 0.737257, 0.806095),
        ("slope:-0.13,1.13", 0.833100, None),  # the peer package prints 0.7373 here: not a bound
    ],
)
def test_eclipse_sample(activation, neuron_ref, layer_ref):
    net = lipverify.load(shared_path("weights", "lyr2n80test1.npz"), activation=activation)
    neuron = lipverify.bound(net, method="lipsdp-neuron")
    assert neuron.certified and _rel(neuron.bound, neuron_ref) < 1e-4
    assert neuron.bound >= neuron_ref * (1 - 1e-6)  # the exact constant
    if layer_ref:
        assert _rel(lipverify.bound(net, method="lipsdp-layer").bound, layer_ref) < 1e-4
    fast = lipverify.bound(net, method="ldlt-fast")
    assert fast.certified and fast.bound >= neuron.bound * (1 - 1e-9)


GLIPSDP = {
    "fnn2": [5.10971, 5.22695, 5.02970, 5.57259, 5.20528],
    "fnn3": [9.72861, 9.79179, 8.92957, 7.75390, 8.70276],
}


@pytest.mark.parametrize("arch, seed", [(a, s) for a in GLIPSDP for s in range(5)])
def test_glipsdp_digits_row7(arch, seed):
    net = lipverify.load(shared_path("weights", "glipsdp_digits", f"{arch}_seed{seed}_weights.mat"))
    r = lipverify.bound(net, method="lipsdp-neuron", output_rows=[7], solver="smooth")
    assert r.certified
    assert _rel(r.bound, GLIPSDP[arch][seed]) < 1e-4
    lower = lipverify.bound(net, method="lower", output_rows=[7]).bound
    naive = lipverify.bound(net, method="naive", output_rows=[7]).bound
    assert lower <= r.bound <= naive


def test_single_layer_reduces_to_norm_and_network_refused():
    net = lipverify.Network.sequential([np.array([[3.0, 0.0], [0.0, 1.0]]), np.eye(2)], [RELU])
    assert lipverify.bound(net, method="lipsdp-neuron").bound == pytest.approx(3.0, rel=1e-7)
    with pytest.raises(NotApplicableError, match="not sound"):
        lipverify.bound(net, method="lipsdp-network")


def test_counterexample_of_section_1_3_is_not_undercut():
    """LipSDP-Network returns 1.0 here; the true constant is 2 sqrt 2."""
    net = lipverify.Network.sequential(
        [np.array([[-2.0, -2.0], [-2.0, -1.0]]), np.array([[-1.0, 1.0]])], [RELU]
    )
    for method in ("lipsdp-neuron", "lipsdp-layer", "ldlt-fast", "ldlt", "naive"):
        r = lipverify.bound(net, method=method)
        assert r.certified and r.bound >= 2 * np.sqrt(2) * (1 - 1e-12), method


def test_certifier_repairs_or_rejects_infeasible_points():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(8, 5)), rng.normal(size=(7, 8)), rng.normal(size=(2, 7))]
    net = lipverify.Network.sequential(ws, [RELU, RELU])
    lmi = ChainLMI.from_network(net)
    best = lipverify.bound(net, method="lipsdp-neuron")
    params = (
        np.asarray(best.certificate.body["params"])
        if "params" in best.certificate.body
        else None
    )
    from lipverify.solvers.sequential import ldlt_fast_params
    from lipverify.solvers.smooth_rho import minimize_rho

    opt, rho, _ = minimize_rho(lmi, ldlt_fast_params(lmi))
    # shrink the multipliers: M(rho*, t) is no longer PSD at the solver's claimed rho
    bad = opt * 0.5
    cert = certify_chain(lmi, bad)
    assert cert.ok
    m = lmi.assemble(cert.params, cert.rho)
    assert np.linalg.eigvalsh(m)[0] > 0  # what was certified is really feasible
    assert cert.bound >= best.bound * (1 - 1e-6)
    # negative multipliers are projected, all-zero ones repaired by blending (§8 step 4)
    zero = certify_chain(lmi, np.zeros_like(opt))
    assert zero.ok and zero.theta > 0
    assert params is None or len(params) == len(opt)


def test_random_nets_sandwich():
    rng = np.random.default_rng(3)
    for dims in ([6, 12, 9, 3], [5, 8, 8, 8, 2]):
        ws = [
            rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1)
        ]
        for act in (
            RELU,
            SlopeRestricted.named("tanh"),
            SlopeRestricted.named("leaky_relu", 0.1),
            SlopeRestricted.named("sigmoid"),
        ):
            net = lipverify.Network.sequential(ws, [act] * (len(dims) - 2))
            lower = lipverify.bound(net, method="lower").bound
            neuron = lipverify.bound(net, method="lipsdp-neuron").bound
            layer = lipverify.bound(net, method="lipsdp-layer").bound
            fast = lipverify.bound(net, method="ldlt-fast").bound
            naive = lipverify.bound(net, method="naive").bound
            assert lower <= neuron * (1 + 1e-9)
            assert neuron <= layer * (1 + 1e-6) and neuron <= fast * (1 + 1e-6)
            if act.alpha * act.beta >= 0:
                assert layer <= naive * (1 + 1e-6)


def test_linf_sandwich_and_layer_order():
    rng = np.random.default_rng(0)
    dims = [5, 10, 8, 2]
    ws = [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(3)]
    net = lipverify.Network.sequential(ws, [RELU, RELU])
    neuron = lipverify.bound(net, method="lipsdp-neuron", norm="linf")
    layer = lipverify.bound(net, method="lipsdp-layer", norm="linf")
    naive = lipverify.bound(net, method="naive", norm="linf")
    lower = lipverify.bound(net, method="lower", norm="linf")
    assert neuron.certified and layer.certified
    assert lower.bound <= neuron.bound <= layer.bound * (1 + 1e-7) <= naive.bound * (1 + 1e-6)
    assert len(neuron.details["per_row"]) == 2


def test_badly_scaled_deep_net_still_certifies():
    """rho ~ 1e20: equilibration keeps the §8 check meaningful (ACAS Xu-like scales)."""
    rng = np.random.default_rng(11)
    ws = [30.0 * rng.normal(size=(12, 5))] + [30.0 * rng.normal(size=(12, 12)) for _ in range(5)]
    ws.append(30.0 * rng.normal(size=(3, 12)))
    net = lipverify.Network.sequential(ws, [RELU] * 6)
    fast = lipverify.bound(net, method="ldlt-fast")
    naive = lipverify.bound(net, method="naive")
    assert fast.certified and naive.certified
    assert lipverify.bound(net, method="lower").bound <= fast.bound


def test_smooth_solver_runs_balanced_and_maps_back():
    """The smooth solver works on the balanced chain (weights ~30, rho ~ 1e29) and returns
    the original multipliers and rho*. Unbalanced, L-BFGS-B barely moves from the start
    (8.44e29 from 8.49e29); balanced it gets within 1.6x of the optimum (1.82e29)."""
    from lipverify.solvers.interior import solve_chain_ipm
    from lipverify.solvers.sequential import ldlt_fast_params
    from lipverify.solvers.smooth_rho import minimize_rho

    rng = np.random.default_rng(11)
    ws = [30.0 * rng.normal(size=(12, 5))] + [30.0 * rng.normal(size=(12, 12)) for _ in range(5)]
    ws.append(30.0 * rng.normal(size=(3, 12)))
    lmi = ChainLMI.from_network(lipverify.Network.sequential(ws, [RELU] * 6))
    start = ldlt_fast_params(lmi)
    params, rho, info = minimize_rho(lmi, start)
    assert rho == pytest.approx(lmi.rho_star(params), rel=1e-9)  # mapped back exactly
    assert rho < lmi.rho_star(start)
    opt = solve_chain_ipm(lmi, tol=1e-9).rho
    plain = minimize_rho(lmi, start, balanced=False)[1]
    assert opt * (1 - 1e-8) <= rho <= 0.5 * plain
