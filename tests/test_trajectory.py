"""The trajectory lower bound on LipSDP's optimum (lipverify.solvers.trajectory): below the
solved optimum and above the sampled lower bound on chains and residual networks, at the
optimum with layer multipliers, refused where the QC is not a slope interval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_residual import resnet

import lipverify
from lipverify.errors import NotApplicableError
from lipverify.ir.activations import GroupSort
from lipverify.ir.linear import Conv2d
from lipverify.solvers.trajectory import ascent_bound, groups, trajectory_ascent


def _mlp(seed, act="relu"):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(8, 5)), rng.normal(size=(8, 8)), rng.normal(size=(3, 8))]
    sigma = lipverify.SlopeRestricted.named("leaky_relu", 0.1) if act == "leaky" \
        else lipverify.SlopeRestricted.named(act)
    return lipverify.Network.sequential(ws, [sigma] * 2)


@pytest.mark.parametrize(("seed", "act"), [(0, "relu"), (1, "tanh")])
def test_between_the_sampled_lower_bound_and_the_neuron_optimum(seed, act):
    """Rank one is not the whole dual for per-neuron multipliers: the ascent lies between the
    sampled lower bound (a real trajectory is feasible) and LipSDP-Neuron's optimum."""
    net = _mlp(seed, act)
    rho = lipverify.bound(net, method="lipsdp-neuron").bound ** 2
    lower = lipverify.bound(net, method="lower").bound ** 2
    lows = [ascent_bound(net, True, seed=s) for s in range(3)]
    assert all(0 < low <= rho * (1 + 1e-7) for low in lows)
    assert max(lows) >= 0.95 * lower


@pytest.mark.parametrize(("seed", "act"), [(0, "relu"), (1, "tanh"), (2, "leaky")])
def test_rank_two_meets_the_neuron_optimum(seed, act):
    """Two trajectories sharing each neuron's QC reach LipSDP-Neuron's optimum where rank one
    stops short (seed 0: 0.75 of it); the columns are scaled to ``sum_j |x_{0,j}|^2 = 1`` and
    satisfy every summed constraint."""
    net = _mlp(seed, act)
    rho = lipverify.bound(net, method="lipsdp-neuron").bound ** 2
    found = [trajectory_ascent(net, True, rank=2, seed=s) for s in range(3)]
    value, z = max(found, key=lambda f: f[0])
    assert rho * (1 - 1e-6) <= value <= rho * (1 + 1e-7)
    assert z.shape == (5 + 8 + 8, 2)
    assert np.sum(z[:5] ** 2) == pytest.approx(1.0, rel=1e-12)
    assert np.sum((net.output.terms[0].op.matmat(z[-8:].T)) ** 2) == pytest.approx(value,
                                                                                   rel=1e-9)
    blocks = np.split(z, [5, 13])
    for k, node in enumerate(net.nodes):  # each neuron's QC summed over both trajectories
        a, b = float(node.activation.alpha), float(node.activation.beta)
        p, x = node.pre.terms[0].op.matmat(blocks[k].T).T, blocks[k + 1]
        assert (np.sum(x * x - (a + b) * x * p + a * b * p * p, axis=1) <= 1e-12).all()
    if seed == 0:
        assert ascent_bound(net, True) < 0.8 * rho


@pytest.mark.parametrize(("seed", "act"), [(0, "relu"), (1, "tanh"), (2, "leaky")])
def test_meets_the_layer_optimum_on_mlps(seed, act):
    """With one multiplier per layer the rank-one ascent reaches LipSDP-Layer's optimum."""
    net = _mlp(seed, act)
    rho = lipverify.bound(net, method="lipsdp-layer").bound ** 2
    low = ascent_bound(net, False)
    assert rho * (1 - 1e-3) <= low <= rho * (1 + 1e-7)


def test_group_sizes():
    rng = np.random.default_rng(4)
    ops = [Conv2d(rng.normal(size=(3, 1, 3, 3)), (1, 5, 5), pads=(1, 1, 1, 1)),
           Conv2d(rng.normal(size=(3, 3, 3, 3)), (3, 5, 5), pads=(1, 1, 1, 1)),
           rng.normal(size=(2, 75))]
    net = lipverify.Network.sequential(ops, [lipverify.SlopeRestricted.named("relu")] * 2,
                                       input_shape=(1, 5, 5))
    assert groups(net, False) == [75, 75] and groups(net, True) == [1, 1]


@pytest.mark.parametrize("k", [2, 3])
def test_on_residual_nets(k):
    """Residual DAGs (skip terms read earlier nodes): below each formulation's optimum, above
    the sampled lower bound."""
    rng = np.random.default_rng(k)
    blocks = [(rng.normal(size=(10, 6)) / np.sqrt(6), rng.normal(size=(6, 10)) / np.sqrt(10))
              for _ in range(k)]
    net = resnet(blocks, rng)
    lower = lipverify.bound(net, method="lower").bound ** 2
    for mult, method in ((True, "lipsdp-neuron"), (False, "lipsdp-layer")):
        rho = lipverify.bound(net, method=method).bound ** 2
        low = ascent_bound(net, mult)
        assert lower * 0.95 <= low <= rho * (1 + 1e-7)


def test_groupsort_is_refused():
    net = lipverify.Network.sequential([np.eye(4), np.eye(4)], [GroupSort(2)])
    with pytest.raises(NotApplicableError, match="slope interval"):
        ascent_bound(net)


@pytest.mark.parametrize("k", [2, 3])
def test_dag_dual_start_is_feasible_and_near_the_optimum(k, monkeypatch):
    """On residual nets the KKT fit, the node-by-node repair and the best scale give
    multipliers with a finite rho*, never below the solved optimum (how close depends on the
    net: 20x above it in L on k = 2, against 2.6x below the previous start on resnet_2b);
    the pipeline offers them as a start and reports what became of them."""
    from lipverify.lmi.dag import DagLMI
    from lipverify.solvers.dag_start import dual_start, kkt_multipliers, repair

    rng = np.random.default_rng(k)
    blocks = [(rng.normal(size=(10, 6)) / np.sqrt(6), rng.normal(size=(6, 10)) / np.sqrt(10))
              for _ in range(k)]
    net = resnet(blocks, rng)
    lmi = DagLMI.from_network(net, True)
    opt = lipverify.bound(net, method="lipsdp-neuron")
    t = dual_start(net, lmi, True)
    assert t is not None and (t > 0).all()
    rho = lmi.rho_star(t)
    assert opt.bound ** 2 * (1 - 1e-6) <= rho < math.inf
    _, z = trajectory_ascent(net, True)
    rho_fit, fit = kkt_multipliers(lmi, z)
    assert rho_fit > 0 and (fit > 0).all()
    fixed = repair(lmi, fit * 1e3)  # far too large: the repair scales nodes down
    assert fixed is not None and (fixed <= fit * 1e3 * (1 + 1e-12)).all()
    assert any(math.isfinite(lmi.rho_star(4.0 ** j * fixed)) for j in range(30))
    import lipverify.methods.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DUAL_START_MIN_ORDER", 0)
    channel = lipverify.bound(net, method="lipsdp-neuron", solver="smooth")
    assert channel.details.get("dual_start") in ("best start", "not better")


@pytest.mark.parametrize(("grouped", "per_neuron"), [(False, True), (False, False),
                                                     (True, True), (True, "channel")])
def test_ray_is_rho_star_at_every_scale(grouped, per_neuron):
    """``dag_start.ray``: rho*(c t) for every c from one recursion (Woodbury on the output
    term; ``Ray.rho``), equal to the LMI's own rho* (an output reading the input too, and a
    grouped post-activation ResNet); infinite at and below c_min, where the hidden block is
    not positive definite."""
    from test_residual import post_activation_resnet

    from lipverify.lmi.dag import DagLMI
    from lipverify.solvers.dag_start import best_scale, kkt_multipliers, ray, repair

    rng = np.random.default_rng(5)
    if grouped:
        net = post_activation_resnet(rng, n=5, m=8, blocks=3)
    else:
        blocks = [(rng.normal(size=(10, 6)) / np.sqrt(6), rng.normal(size=(6, 10)) / 3)
                  for _ in range(3)]
        net = resnet(blocks, rng)
    lmi = DagLMI.from_network(net, per_neuron)
    assert lmi.grouped == grouped
    t = repair(lmi, kkt_multipliers(lmi, trajectory_ascent(net, per_neuron, steps=300)[1])[1])
    along = ray(lmi, t)
    assert along is not None and along.c_min > 0
    for c in along.c_min * np.array([1.001, 1.1, 3.0, 1e3]):
        assert along.rho(c) == pytest.approx(lmi.rho_star(c * t), rel=1e-8)
    assert along.rho(along.c_min) == math.inf
    assert lmi.rho_star(0.99 * along.c_min * t) == math.inf
    rho, ct = best_scale(lmi, t)  # the search along the ray finds the best scale on a grid
    grid = [lmi.rho_star(c * t) for c in along.c_min * np.geomspace(1.0001, 1e5, 80)]
    assert rho == pytest.approx(lmi.rho_star(ct), rel=1e-8)
    assert rho <= min(grid) * (1 + 1e-3)


def test_grouped_repair_makes_every_pivot_positive_definite():
    """The repair node by node inside the group recursion: multipliers far too small for
    their couplings come back scaled down node by node (never up), after which the hidden
    block without the output term is positive definite."""
    from test_residual import post_activation_resnet

    from lipverify.lmi.dag import DagLMI
    from lipverify.solvers.dag_start import repair

    net = post_activation_resnet(np.random.default_rng(2), n=5, m=8, blocks=3)
    lmi = DagLMI.from_network(net, True)
    assert lmi.grouped
    t = np.random.default_rng(3).uniform(0.5, 2.0, sum(lmi.param_sizes))
    fixed = repair(lmi, t)
    assert fixed is not None and (fixed <= t).all() and (fixed < t).any()
    n0 = lmi.sizes[0]
    hidden = lmi.assemble(fixed, 0.0)[n0:, n0:]
    hidden += lmi.out[:, n0:].T @ lmi.out[:, n0:]  # without the output term
    assert np.linalg.eigvalsh(hidden)[0] > 0



def test_conv_chain_dual_start_from_several_trajectories(monkeypatch):
    """A conv chain's dual start is fitted on its DAG form (the same multiplier layout) from
    four trajectories at once (``M z_j = 0`` for every column): finite on the chain, never
    below the channel optimum; the pipeline runs it instead of the layer warm start and
    keeps the certified bound between the optimum and naive."""
    from lipverify.lmi.chain import ChainLMI
    from lipverify.lmi.dag import DagLMI
    from lipverify.solvers.dag_start import dual_start, kkt_multipliers

    net = lipverify.load(Path(__file__).resolve().parents[1] / "models" / "digits_cnn.onnx")
    chain, dag = ChainLMI.from_network(net, "channel"), DagLMI.from_network(net, "channel")
    assert chain.param_sizes == dag.param_sizes == [4, 8]
    opt = lipverify.bound(net, method="lipsdp-channel", solver="ipm")
    assert opt.status.optimal
    _, z = trajectory_ascent(net, "channel", rank=4)
    assert z.shape == (chain.order, 4)
    fit = kkt_multipliers(dag, z)
    assert fit is not None and (fit[1] > 0).all()
    t = dual_start(net, dag, "channel", rank=4)
    assert t is not None
    assert opt.bound ** 2 * (1 - 1e-6) <= chain.rho_star(t) < math.inf
    import lipverify.methods.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DUAL_START_MIN_ORDER", 0)
    res = lipverify.bound(net, method="lipsdp-channel", solver="smooth")
    assert res.details.get("dual_start") in ("best start", "not better")
    assert (res.details.get("warm_start") is None) == (res.details["dual_start"] == "best start")
    naive = lipverify.bound(net, method="naive").bound
    assert res.certified and opt.bound * (1 - 1e-6) <= res.bound <= naive
