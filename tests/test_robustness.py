"""Margin bounds, sound margins and certified robust accuracy (lipverify.robustness).

Real values: exact margins and constants on hand-built nets, sqrt(2) L as the pairwise
ceiling, and the 87 real MNIST images of ../shared/data on mnist-net_256x2 (skipped when
../shared is absent).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lipverify_cli.main import main

import lipverify
from lipverify.errors import UsageError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.robustness import (
    certified_robustness,
    forward_enclosure,
    load_dataset,
    margin_bounds,
    sound_margins,
)
from lipverify.robustness.margins import check_pairs, difference, sqrt2_times

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "data" / "mnist_vnncomp2021.npz"
NET256 = SHARED / "models" / "onnx" / "mnist-net_256x2.onnx"
SAMPLE = ROOT / "models" / "digits_mlp_relu.onnx"
RELU = SlopeRestricted.named("relu")


def _net(seed=0, widths=(6, 12, 12, 4), act=RELU):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(b, a)) / math.sqrt(a) for a, b in zip(widths, widths[1:])]
    bs = [rng.normal(size=b) * 0.1 for b in widths[1:]]
    return lipverify.Network.sequential(ws, [act] * (len(ws) - 1), biases=bs)


# ----------------------------------------------------------------- sound margins
@pytest.mark.parametrize("act", [RELU, SlopeRestricted.named("tanh"), GroupSort(2)])
def test_enclosure_contains_a_higher_precision_evaluation(act):
    """The float64 logits are within the radius of a longdouble evaluation of the same net,
    and the radius is tiny (a few hundred ulp of the logits)."""
    net = _net(1, act=act)
    x = np.random.default_rng(2).normal(size=(50, 6))
    mid, rad = forward_enclosure(net, x)
    z = x.astype(np.longdouble)
    for node in net.nodes:
        w = node.pre.terms[0].op.to_dense().astype(np.longdouble)
        pre = z @ w.T + node.pre.bias.astype(np.longdouble)
        if isinstance(act, GroupSort):
            z = np.sort(pre.reshape(len(pre), -1, 2), axis=2).reshape(pre.shape)
        else:
            z = np.tanh(pre) if act.name == "tanh" else np.maximum(pre, 0)
    w = net.output.terms[0].op.to_dense().astype(np.longdouble)
    exact = z @ w.T + net.output.bias.astype(np.longdouble)
    assert np.all(np.abs(exact - mid) <= rad)
    assert rad.max() < 1e-12 * max(1.0, np.abs(mid).max())


def test_sound_margins_are_below_the_computed_ones_and_exact_on_a_linear_net():
    net = lipverify.Network.sequential([np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])], [])
    low = sound_margins(net, np.array([[1.0, 1.0]]), np.array([0]))
    assert low[0, 0] == math.inf
    assert 1.0 - 1e-12 < low[0, 1] <= 1.0 and 2.5 - 1e-12 < low[0, 2] <= 2.5


def test_relu_9_200_margins_stay_tight():
    """Entrywise interval radii grow by the row sums of |W| per layer (1e-8 -> 54 over nine
    layers); the l2 companion keeps them near 1e-6."""
    path = SHARED / "models" / "onnx" / "mnist_relu_9_200.onnx"
    if not (path.exists() and MNIST.exists()):
        pytest.skip("../shared is absent")
    net = lipverify.load(path)
    x = np.load(MNIST)["x"][:5]
    mid, rad = forward_enclosure(net, x)
    assert rad.max() < 1e-5
    assert np.all(np.abs(net.forward(x) - mid) <= rad)


# ----------------------------------------------------------------- margin bounds
def test_naive_pairs_are_exact_on_a_linear_classifier():
    w = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    net = lipverify.Network.sequential([w], [])
    mb = margin_bounds(net, method="naive")
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        exact = np.linalg.norm(w[i] - w[j])
        assert exact <= mb[i, j] <= exact * (1 + 1e-9)
    assert mb.matrix()[2, 1] == mb[1, 2] and mb.matrix()[0, 0] == 0.0
    assert mb.certified and set(mb.source) == {"pair"}


@pytest.mark.parametrize("pair_solve", ["reuse", "full"])
def test_pairs_never_exceed_sqrt2_global_and_are_certified(pair_solve):
    net = _net(3, widths=(8, 16, 16, 5))
    mb = margin_bounds(net, method="lipsdp-neuron", pair_solve=pair_solve)
    glob = mb.global_result
    assert glob.certified and mb.certified and len(mb.pairs) == 10
    assert np.all(mb.values <= sqrt2_times(glob.bound))
    for (i, j), value in zip(mb.pairs, mb.values):
        sampled = lipverify.bound(difference(net, i, j), method="lower", samples=8).bound
        assert sampled <= value * (1 + 1e-9)
    if pair_solve == "full":  # a solve per pair: strictly better than the sqrt(2) L ceiling
        assert np.all(mb.values < 0.99 * sqrt2_times(glob.bound))


def test_full_pairs_match_the_pair_networks_own_bound():
    net = _net(4, widths=(5, 10, 3))
    mb = margin_bounds(net, method="lipsdp-neuron", pair_solve="full")
    own = lipverify.bound(difference(net, 0, 2), method="lipsdp-neuron").bound
    assert mb[2, 0] == pytest.approx(own, rel=1e-6)


@pytest.mark.parametrize("pairs, match", [
    ([(0, 0)], "distinct"), ([(0, 9)], "distinct"), ([("a", 1)], "distinct"),
    ([(True, 1)], "distinct"), ([], "empty")])
def test_bad_pairs(pairs, match):
    with pytest.raises(UsageError, match=match):
        check_pairs(pairs, 4)


def test_margin_bounds_need_a_classifier():
    with pytest.raises(UsageError, match="at least 2 outputs"):
        margin_bounds(lipverify.Network.sequential([np.ones((1, 3))], []), method="naive")


# ----------------------------------------------------------- robust accuracy
def test_radii_on_a_hand_built_classifier():
    """f = relu(x) with two classes: margin 2 at (2, 0); global L = 1, so the global radius
    is 2/sqrt(2) and the pairwise one (||e0 - e1|| on relu: L_01 = sqrt(2)) the same."""
    net = lipverify.Network.sequential([np.eye(2), np.eye(2)], [RELU])
    rep = certified_robustness(net, np.array([[2.0, 0.0], [0.0, 0.5]]), np.array([0, 0]),
                               eps=[1.0, 1.5], method="naive")
    s0, s1 = rep.samples
    assert s0.prediction == 0 and s0.margin == pytest.approx(2.0)
    assert math.sqrt(2) * (1 - 1e-9) < s0.radius["global"] <= math.sqrt(2)
    assert s0.radius["pairwise"] >= s0.radius["global"]
    assert s1.prediction == 1 and s1.margin < 0 and s1.radius == {"global": 0.0,
                                                                    "pairwise": 0.0}
    assert rep.accuracy("global", 1.0) == 0.5 and rep.accuracy("global", 1.5) == 0.0
    assert rep.clean_accuracy == 0.5


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((3, 5)), np.zeros(3, int), "shape"),
    (np.zeros((3, 64)), np.array([0, 1, 10]), "outside 0..9"),
    (np.full((2, 64), np.nan), np.zeros(2, int), "NaN"),
    (np.zeros((3, 64)), np.zeros(2, int), "y has shape"),
    (np.zeros((0, 64)), np.zeros(0, int), "empty"),
    (np.zeros((2, 64)), np.array([0.5, 1.0]), "integer labels"),
])
def test_bad_datasets_are_listed(x, y, match):
    with pytest.raises(UsageError, match=match):
        certified_robustness(SAMPLE, x, y, method="naive")


def test_bad_eps():
    with pytest.raises(UsageError, match="eps"):
        certified_robustness(SAMPLE, np.zeros((1, 64)), np.zeros(1, int), eps=[0.0])


def test_dataset_file_checks(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 64)))
    with pytest.raises(UsageError, match="missing y"):
        load_dataset(tmp_path / "d.npz", 64, 10)
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 2), y=np.zeros(2, int))
    with pytest.raises(UsageError, match="not a readable"):
        load_dataset(tmp_path / "o.npz", 64, 10)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UsageError):
        load_dataset(tmp_path / "bad.npz", 64, 10)


def _digits(tmp_path, n=30):
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, x=d.data[-n:] / 16.0, y=d.target[-n:])
    return path


def test_cli_robustness_on_the_sample_model(tmp_path):
    pytest.importorskip("sklearn")
    data = _digits(tmp_path)
    out = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "png")}
    res = CliRunner().invoke(main, ["robustness", str(SAMPLE), "--data", str(data),
                                    "--eps", "0.05,0.1,0.2", "-m", "ldlt-fast",
                                    "--json", str(out["json"]), "--csv", str(out["csv"]),
                                    "--plot", str(out["png"])])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    report = json.loads(out["json"].read_text())
    assert report["clean_accuracy"] == summary["clean_accuracy"] > 0.8
    rows = summary["certified_accuracy"]
    assert [r["eps"] for r in rows] == [0.05, 0.1, 0.2]
    for r in rows:
        assert 0 <= r["global"] <= r["pairwise"] <= report["clean_accuracy"]
    assert rows[0]["pairwise"] >= rows[-1]["pairwise"]
    assert out["csv"].read_text().count("\n") == 31
    assert out["png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, match", [
    (["--eps", "0,1"], "radii must be finite"), (["--eps", "a"], "separated by commas"),
    (["--domain", "1:0"], "LO < HI"), (["--plot", "x.gif"], ".png, .pdf or .svg")])
def test_cli_robustness_bad_options(tmp_path, args, match):
    pytest.importorskip("sklearn")
    data = _digits(tmp_path, 3)
    res = CliRunner().invoke(main, ["robustness", str(SAMPLE), "--data", str(data), *args],
                             catch_exceptions=False)
    assert res.exit_code == 2 and match in " ".join(res.output.split()), res.output
    assert not (Path.cwd() / "x.gif").exists()


@pytest.mark.skipif(not (MNIST.exists() and NET256.exists()), reason="../shared is absent")
def test_mnist_256x2_on_real_images():
    """All 87 real images are classified correctly (the data README), every margin is
    provably positive, and the certified accuracies are ordered as the theory says."""
    data = np.load(MNIST)
    rep = certified_robustness(NET256, data["x"], data["y"], eps=[0.0005, 0.001, 0.002],
                               method="ldlt-fast")
    assert rep.clean_accuracy == 1.0 and all(s.margin > 0 for s in rep.samples)
    for e in rep.eps:
        assert rep.accuracy("global", e) <= rep.accuracy("pairwise", e)
    assert rep.accuracy("pairwise", 0.0005) > 0.5 > rep.accuracy("global", 0.002)


def test_cli_bound_margins():
    res = CliRunner().invoke(main, ["bound", str(SAMPLE), "-m", "ldlt-fast", "--margins",
                                    "--format", "json", "--no-lower"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    pairs = data["margins"]["pairs"]
    assert len(pairs) == 45 and data["margins"]["certified"]
    assert all(p["bound"] <= sqrt2_times(data["bound"]) for p in pairs)
    res = CliRunner().invoke(main, ["bound", str(SAMPLE), "--margins", "--norm", "linf"])
    assert res.exit_code == 2 and "--margins" in res.output


# ------------------------------------------------------------------ batch job kind
def test_batch_manifest_asks_for_robustness(tmp_path):
    pytest.importorskip("sklearn")
    import yaml

    from lipverify.batch import load_manifest, run_batch
    from lipverify.batch.export import table_rows
    from lipverify.batch.store import ResultsStore

    _digits(tmp_path, 20)
    manifest = tmp_path / "b.yaml"
    manifest.write_text(yaml.safe_dump({
        "models": [str(SAMPLE)], "methods": ["naive", "lower"], "norms": ["l2", "linf"],
        "robustness": {"data": "digits.npz", "eps": [0.05, 0.1]}}))
    summary = run_batch(load_manifest(manifest), tmp_path / "r.db", executor="inline")
    assert summary.errors == 0
    with ResultsStore(tmp_path / "r.db", create=False) as store:
        records = list(store.records())
    rows = {(r["method"], r["norm"]): r for r in table_rows(records)}
    acc = rows["naive", "l2"]["robust_accuracy"]
    assert acc.startswith("0.05: global ") and "pairwise" in acc and "; 0.1: " in acc
    assert rows["naive", "linf"]["robust_accuracy"] == ""  # l2 only
    assert rows["lower", "l2"]["robust_accuracy"] == ""  # a lower bound certifies nothing
    res = next(r.result for r in records if r.method == "naive" and r.norm == "l2")
    table = res.details["robustness"]["certified_accuracy"]
    rep = certified_robustness(SAMPLE, *_arrays(tmp_path / "digits.npz"), eps=[0.05, 0.1],
                               method="naive")
    assert table == rep.table()


def _arrays(path):
    with np.load(path) as d:
        return d["x"], d["y"]


@pytest.mark.parametrize("robustness, match", [
    ({"eps": [0.1]}, "data must be"), ({"data": "missing.npz"}, "missing.npz"),
    ({"data": "digits.npz", "eps": [-1]}, "eps must be"),
    ({"data": "digits.npz", "local": "yes"}, "local must be"),
    ({"data": "digits.npz", "colour": 1}, "unknown key"), ("digits.npz", "mapping"),
    ({"data": "digits.npz", "domain": [1, 0]}, "domain")])
def test_batch_robustness_problems_are_listed(tmp_path, robustness, match):
    pytest.importorskip("sklearn")
    import yaml

    from lipverify.batch import load_manifest

    _digits(tmp_path, 3)
    manifest = tmp_path / "b.yaml"
    manifest.write_text(yaml.safe_dump({"models": [str(SAMPLE)], "methods": ["naive"],
                                        "robustness": robustness}))
    with pytest.raises(UsageError, match=match):
        load_manifest(manifest)


def test_local_radii_never_fewer_than_pairwise():
    """On the balls the pairwise bound leaves open, the local bound (lipverify.regions) is
    tried; a certified local eps is never lost, and the first sample's inactive second
    neuron (gain 10) makes its local constant 1 instead of 10."""
    net = lipverify.Network.sequential([np.diag([1.0, 10.0]), np.eye(2)], [RELU])
    x = np.array([[2.0, -3.0], [0.1, 0.0]])
    rep = certified_robustness(net, x, np.array([0, 0]), eps=[1.2, 1.6], method="naive",
                               local=True)
    s0 = rep.samples[0]
    for e in rep.eps:
        assert rep.accuracy("pairwise", e) <= rep.accuracy("local", e)
    assert s0.radius["pairwise"] < 0.15  # 2 / (sqrt(2) 10)
    assert s0.radius["local_eps"] == (1.2,)  # 2 > sqrt(2) 1.2, not > sqrt(2) 1.6
    assert rep.accuracy("local", 1.2) == 0.5
    # sample 0 at eps 1.2 and 1.6 (both below global), sample 1 at 1.2 (margin 0.1: global)
    assert rep.notes[-1] == "local bounds computed on 3 (sample, eps) balls, below the global " \
        "bound on 2"


def test_margin_bounds_refuse_a_global_result_that_is_no_upper_bound_of_this_model(tmp_path):
    net = lipverify.load(SAMPLE)
    low = lipverify.bound(net, method="lower", samples=4)
    with pytest.raises(UsageError, match="upper bound"):
        margin_bounds(net, global_result=low)
    other = lipverify.bound(ROOT / "models" / "digits_mlp_tanh.onnx", method="naive")
    with pytest.raises(UsageError, match="another model"):
        margin_bounds(net, global_result=other)


@pytest.mark.parametrize("seed,widths", [(3, (8, 16, 16, 5)), (5, (6, 12, 4)),
                                         (7, (6, 10, 10, 10, 4))])
def test_shared_sweep_pairs_are_feasible_points_of_each_pair_lmi(seed, widths):
    """The shared forward sweep (one Rump test per pair) gives every pair a certified value
    between the pair LMI's own optimum (it is one of its feasible points) and sqrt(2) L, and
    every value comes from it (source "pair")."""
    from dataclasses import replace

    from lipverify.certify.chordal import ForwardChordal
    from lipverify.lmi.chain import ChainLMI
    from lipverify.robustness.margins import shared_pair_bounds

    net = _net(seed, widths=widths)
    glob = lipverify.bound(net, method="lipsdp-neuron", lower_bound=False)
    body = glob.certificate.body
    pairs = check_pairs(None, net.output_dim)
    shared = shared_pair_bounds(net, pairs, body)
    for (i, j), value in zip(pairs, shared):
        own = lipverify.bound(difference(net, i, j), method="lipsdp-neuron",
                              lower_bound=False).bound
        assert own * (1 - 1e-6) <= value <= sqrt2_times(glob.bound)
    # a row the network cannot separate (c = 0) is refused, not certified at 0
    lmi = ChainLMI.from_network(net)
    w = lmi.weights[-1]
    plain = replace(lmi, weights=(*lmi.weights[:-1], np.zeros((0, w.shape[1]))),
                    radii=(*lmi.radii[:-1], None))
    got = ForwardChordal(plain, np.asarray(body["params"])).output_bounds(
        float(body["rho"]), w, None, np.zeros((1, w.shape[0])))
    assert got[0] == math.inf


def test_pairs_cost_less_than_three_global_bounds(monkeypatch):
    """Issue target, checked by work done rather than time: the shared sweep certifies
    every pair of a 10-class MLP without a per-pair solve or per-pair chain certificate."""
    import lipverify.certify.gate as gate

    net = _net(11, widths=(20, 32, 32, 10))
    glob = lipverify.bound(net, method="lipsdp-neuron", lower_bound=False)
    calls = []
    original = gate.certify

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(gate, "certify", counting)
    mb = margin_bounds(net, global_result=glob)
    assert len(mb.pairs) == 45 and not calls
    assert "pair" in mb.source and np.all(mb.values <= sqrt2_times(glob.bound))
