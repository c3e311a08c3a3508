"""The low-rank dual solver (lipverify/solvers/lowrank.py): its vector-network dual is exactly
feasible, its gradient is right, its multipliers reach the interior point's optimum and
certify, it refuses what it cannot take, and the device option never runs silently on
another device."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

import lipverify
from cli.main import main
from lipverify.certify.gate import certify
from lipverify.errors import NotApplicableError, SolverError, UsageError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.lmi.chain import ChainLMI, balance
from lipverify.methods import pipeline
from lipverify.solvers.interior import solve_chain_ipm
from lipverify.solvers.lowrank import (
    VectorNetwork,
    default_rank,
    lowrank_reason,
    polish_window,
    resolve_device,
    schur_failure,
    solve_chain_lowrank,
    tail_gram,
)

RELU = SlopeRestricted.named("relu")


def _net(widths, seed, act=RELU):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    return lipverify.Network.sequential(ws, [act] * (len(ws) - 1))


def _lmi(widths, seed, act=RELU):
    return ChainLMI.from_network(_net(widths, seed, act))


@pytest.mark.parametrize("act", [RELU, SlopeRestricted("leaky", 0.1, 1.0),
                                 SlopeRestricted("wide", -0.5, 2.0)])
def test_gradient_matches_finite_differences(act):
    lmi, _, _ = balance(_lmi([5, 6, 7, 3], 0, act))
    net = VectorNetwork(lmi, 4, "cpu")
    z = net.start(3)
    f, g = net.value_grad(z)
    d = np.random.default_rng(1).standard_normal(z.size)
    h = 1e-6
    fd = (net.value_grad(z + h * d)[0] - net.value_grad(z - h * d)[0]) / (2 * h)
    assert fd == pytest.approx(float(g @ d), rel=1e-6)


@pytest.mark.parametrize("act", [RELU, SlopeRestricted("leaky", 0.1, 1.0)])
def test_every_vector_network_is_dual_feasible(act):
    """Every neuron's vector lies on the sphere of its QC, so f(Y) <= rho_opt for any z."""
    lmi = _lmi([4, 6, 6, 2], 2, act)
    opt = solve_chain_ipm(lmi).rho
    net = VectorNetwork(lmi, 3, "cpu")
    a, b = act.alpha, act.beta
    for seed in range(5):
        z = net.start(seed)
        f, ys, cache = net.forward(__import__("torch").as_tensor(z))
        assert f <= opt * (1 + 1e-9)
        assert float(np.sum(ys[0].numpy() ** 2)) == pytest.approx(1.0)
        for k, (_, _, v, _) in enumerate(cache):
            y, v = ys[k + 1].numpy(), v.numpy()
            qc = np.sum((y - a * v) * (b * v - y), axis=1)
            assert np.abs(qc).max() <= 1e-12 * max(1.0, float(np.abs(v).max()) ** 2)


@pytest.mark.parametrize("widths,seed,act", [
    ([6, 8, 8, 3], 0, RELU),
    ([10, 12, 12, 12, 4], 1, RELU),
    ([8, 10, 10, 2], 2, SlopeRestricted("leaky", 0.1, 1.0)),
    ([8, 10, 10, 2], 3, SlopeRestricted.named("tanh")),
])
def test_reaches_the_interior_points_optimum_and_certifies(widths, seed, act):
    lmi = _lmi(widths, seed, act)
    ipm = solve_chain_ipm(lmi)
    res = solve_chain_lowrank(lmi, device="cpu")
    assert res.status == "optimal" and res.gap <= 1e-6
    assert res.lower <= ipm.rho * (1 + 1e-9)  # a feasible dual point
    assert res.rho == pytest.approx(ipm.rho, rel=1e-5)
    cert = certify(lmi, res.params)
    assert cert.ok and cert.bound == pytest.approx(math.sqrt(ipm.rho), rel=1e-5)
    assert math.sqrt(res.lower) <= cert.bound


def test_exact_constant_of_a_diagonal_net():
    """relu(diag(2, 1) x) then (1, 1): the constant is ||(2, 1)|| = sqrt 5 exactly."""
    ws = [np.diag([2.0, 1.0]), np.eye(2), np.array([[1.0, 1.0]])]
    lmi = ChainLMI.from_network(lipverify.Network.sequential(ws, [RELU, RELU]))
    res = solve_chain_lowrank(lmi)
    assert math.sqrt(res.rho) == pytest.approx(math.sqrt(5.0), rel=1e-7)
    assert math.sqrt(res.lower) == pytest.approx(math.sqrt(5.0), rel=1e-7)


def test_multipliers_satisfy_complementary_slackness():
    lmi, _, _ = balance(_lmi([6, 8, 8, 3], 0))
    res = solve_chain_lowrank(lmi)
    net = VectorNetwork(lmi, res.rank, "cpu")
    # the fitted multipliers of the final dual point reproduce its rho
    assert res.rho == pytest.approx(lmi.rho_star(res.params), rel=1e-9)
    assert schur_failure(lmi, res.params) == 0
    assert net.size == sum(lmi.sizes) * res.rank


def test_tail_gram_and_window_polish():
    """Q of the whole chain is W_L^T W_L; re-solving the first layers never loses."""
    lmi, _, _ = balance(_lmi([6, 8, 8, 8, 3], 4))
    res = solve_chain_lowrank(lmi)
    w = lmi.weights[-1]
    np.testing.assert_allclose(tail_gram(lmi, res.params, len(lmi.qcs)), w.T @ w)
    ts = lmi.split(res.params)
    polished = polish_window(lmi, list(ts), 2, None)
    assert polished is not None and polished.shape == res.params.shape
    np.testing.assert_array_equal(polished[16:], res.params[16:])  # the tail is kept
    assert lmi.rho_star(polished) <= res.rho * (1 + 1e-7)


def test_time_limit_returns_certifiable_or_nothing():
    lmi = _lmi([16] * 9 + [4], 5)
    res = solve_chain_lowrank(lmi, time_limit=0.05)
    assert res.params is None or math.isfinite(lmi.rho_star(res.params))
    assert res.seconds < 5


def test_default_rank():
    assert default_rank([64] * 10) == 17
    assert default_rank([784] + [1024] * 8) == 68
    assert default_rank([2, 2]) == 4


def test_refuses_what_it_cannot_take():
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
    gs = ChainLMI.from_network(lipverify.Network.sequential([q, q, q], [GroupSort(2)] * 2))
    assert "slope" in lowrank_reason(gs)
    layer = ChainLMI.from_network(_net([4, 5, 5, 2], 0), per_neuron=False)
    assert "per neuron" in lowrank_reason(layer)
    linear = ChainLMI.from_network(_net([4, 5, 5, 2], 0, SlopeRestricted("id", 1.0, 1.0)))
    assert "alpha = beta" in lowrank_reason(linear)
    with pytest.raises(SolverError, match="cannot take"):
        solve_chain_lowrank(gs)
    net = lipverify.Network.sequential([q, q, q], [GroupSort(2)] * 2)
    with pytest.raises(NotApplicableError, match="solver lowrank cannot solve"):
        lipverify.bound(net, method="lipsdp-neuron", solver="lowrank")


def test_devices():
    torch = pytest.importorskip("torch")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="bad device 'gpu'"):
        resolve_device("gpu")
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
        return
    assert resolve_device("auto") == "cpu"
    with pytest.raises(SolverError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")
    net = _net([4, 5, 5, 2], 0)
    with pytest.raises(SolverError, match="no CUDA GPU"):
        lipverify.bound(net, method="lipsdp-neuron", device="cuda")
    with pytest.raises(UsageError, match="bad device"):
        lipverify.bound(net, method="lipsdp-neuron", device="tpu")


def test_cli_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    rng = np.random.default_rng(0)
    path = tmp_path / "net.npz"
    np.savez(path, W0=rng.normal(size=(5, 4)), W1=rng.normal(size=(2, 5)))
    res = CliRunner().invoke(main, ["bound", str(path), "--device", "cuda", "--no-lower"])
    assert res.exit_code == 5 and "no CUDA GPU" in res.output


def test_pipeline_uses_it_on_large_chains_and_matches_the_interior_point(monkeypatch):
    """A 16-layer chain of 1024 neurons: lowrank (by auto's threshold, lowered here),
    certified, equal to the interior point's bound, between the sampled lower bound and
    ldlt-fast; at the default threshold the interior point takes it."""
    net = _net([16] + [64] * 16 + [4], 7)
    monkeypatch.setattr(pipeline, "LOWRANK_AUTO_MIN_NEURONS", 1000)
    out = lipverify.bound(net, method="lipsdp-neuron", lower_bound=True)
    assert out.certified and out.solver == "lowrank" and out.details["device"] == "cpu"
    assert out.details["gap"] <= 1e-4
    ipm = lipverify.bound(net, method="lipsdp-neuron", solver="ipm", lower_bound=False)
    assert out.bound == pytest.approx(ipm.bound, rel=1e-4)
    fast = lipverify.bound(net, method="ldlt-fast", lower_bound=False)
    assert out.lower_bound <= out.bound <= fast.bound
    monkeypatch.undo()
    small = lipverify.bound(net, method="lipsdp-neuron", lower_bound=False, time_limit=1.0)
    assert small.solver != "lowrank" and "1024 neurons < 2000" in small.details["lowrank"]


def test_certificate_round_trip(tmp_path):
    """A lowrank bound's certificate file is re-verified from scratch by check_certificate,
    and a lowered rho is rejected."""
    import json

    net = _net([8] * 9 + [3], 11)
    out = lipverify.bound(net, method="lipsdp-neuron", solver="lowrank", lower_bound=False)
    assert out.certified and out.solver == "lowrank"
    path = tmp_path / "cert.json"
    lipverify.save_certificate(out, path)
    check = lipverify.check_certificate(net, path)
    assert check.valid and check.bound == pytest.approx(out.bound)
    data = json.loads(path.read_text())
    data["certificate"]["rho"] *= 0.99
    data["bound"] *= 0.995
    assert not lipverify.check_certificate(net, data).valid


def test_auto_leaves_conv_chains_to_the_other_solvers(monkeypatch):
    from lipverify.ir.linear import Conv2d, Dense
    from lipverify.ir.network import Affine, Node, Term

    rng = np.random.default_rng(0)
    conv = Conv2d(rng.standard_normal((2, 1, 3, 3)), (1, 5, 5), pads=(1, 1, 1, 1))
    n1 = Node(RELU, Affine((Term(0, conv),), np.zeros(50)), (2, 5, 5))
    out = Affine((Term(1, Dense(rng.standard_normal((3, 50)) / 7)),), np.zeros(3))
    net = lipverify.Network((1, 5, 5), (n1,), out)
    monkeypatch.setattr(pipeline, "LOWRANK_AUTO_MIN_NEURONS", 10)
    res = lipverify.bound(net, method="lipsdp-neuron", lower_bound=False)
    assert res.solver != "lowrank" and "convolutional" in res.details["lowrank"]
    forced = lipverify.bound(net, method="lipsdp-neuron", solver="lowrank", lower_bound=False)
    assert forced.solver == "lowrank" and forced.certified
    assert forced.bound == pytest.approx(res.bound, rel=1e-5)


def test_per_neuron_slopes_of_local_bounds():
    """Per-neuron slope intervals (as local bounds produce them, none degenerate) give the
    interior point's optimum too."""
    from dataclasses import replace

    from lipverify.qc import SlopeQC

    lmi = _lmi([6, 9, 9, 3], 13)
    rng = np.random.default_rng(2)
    qcs = []
    for qc in lmi.qcs:
        lo = rng.uniform(0.0, 0.4, qc.n)
        qcs.append(SlopeQC(qc.n, lo, lo + rng.uniform(0.1, 0.6, qc.n)))
    local = replace(lmi, qcs=tuple(qcs))
    ipm = solve_chain_ipm(local)
    res = solve_chain_lowrank(local)
    assert res.rho == pytest.approx(ipm.rho, rel=1e-5)
    assert certify(local, res.params).ok


def test_rank_staircase_reaches_the_optimum_from_rank_two():
    """Started below the rank it needs, the solve adds columns when it stalls (rank 2 -> 4
    here) and still meets the interior point's optimum; rank 1 (no continuous freedom) is
    raised to 2."""
    lmi = _lmi([10, 12, 12, 12, 4], 1)
    ipm = solve_chain_ipm(lmi)
    res = solve_chain_lowrank(lmi, rank=2)
    assert res.rank > 2 and res.status == "optimal"
    assert res.rho == pytest.approx(ipm.rho, rel=1e-6)
    assert res.lower == pytest.approx(ipm.rho, rel=1e-6)
    assert solve_chain_lowrank(lmi, rank=1, max_iterations=400).rank >= 2


def test_a_failing_solve_falls_back_to_the_certified_start():
    """A zero output map (f = 0 at every dual point): the low-rank solver refuses, and the
    bound is ldlt-fast's certified one, saying so."""
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(6, 6)), np.zeros((2, 6))]
    net = lipverify.Network.sequential(ws, [RELU, RELU])
    out = lipverify.bound(net, method="lipsdp-neuron", solver="lowrank", lower_bound=False)
    assert out.certified and out.bound <= 1e-5
    assert "low-rank solver failed" in str(out.status)
