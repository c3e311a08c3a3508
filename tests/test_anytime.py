"""The anytime ``auto`` method (lipverify.methods.anytime): the certified naive bound first,
then better stages within the time limit; the smallest certified bound is returned.

Truth used here: each stage's own certified result (``auto`` equals their minimum), the naive
product (``auto`` is never above it), and stages broken on purpose (a failure, an LMI that does
not fit, a certified bound above naive).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_MODELS
from lipverify_cli.main import main

import lipverify
from lipverify import Network, SlopeRestricted
from lipverify.ir.linear import Conv2d, Dense
from lipverify.ir.network import Affine, Node, Term
from lipverify.methods import METHODS, get_method
from lipverify.methods.anytime import (
    AUTO_TIME_LIMIT,
    STRUCTURED_TIME_LIMIT,
    StageEvent,
    default_time_limit,
    is_structured,
    plan,
)
from lipverify.results import MethodOutput

RELU = SlopeRestricted.named("relu")


def mlp(widths=(6, 12, 12, 3), seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((b, a)) / math.sqrt(a) for a, b in zip(widths, widths[1:])]
    return Network.sequential(ws, [RELU] * (len(ws) - 1))


def resnet(seed=0):
    """x -> z1 = relu(W1 x) -> z2 = relu(W2 z1 + x) -> C z2."""
    rng = np.random.default_rng(seed)
    n1 = Node(RELU, Affine((Term(0, Dense(rng.standard_normal((4, 4)))),), np.zeros(4)), (4,))
    n2 = Node(RELU, Affine((Term(1, Dense(rng.standard_normal((4, 4)))),
                            Term(0, Dense(np.eye(4)))), np.zeros(4)), (4,))
    out = Affine((Term(2, Dense(rng.standard_normal((2, 4)))),), np.zeros(2))
    return Network((4,), (n1, n2), out)


def convnet(seed=0):
    rng = np.random.default_rng(seed)
    conv = Conv2d(rng.standard_normal((2, 1, 3, 3)), (1, 5, 5), pads=(1, 1, 1, 1))
    n1 = Node(RELU, Affine((Term(0, conv),), np.zeros(50)), (2, 5, 5))
    out = Affine((Term(1, Dense(rng.standard_normal((3, 50)) / 7)),), np.zeros(3))
    return Network((1, 5, 5), (n1,), out)


def test_plans():
    assert [s.method for s in plan(mlp(), "l2", 120)] == ["naive", "ldlt-fast", "lipsdp-neuron"]
    assert [s.method for s in plan(mlp(), "linf", 120)] == ["naive", "lipsdp-neuron"]
    assert [s.method for s in plan(resnet(), "l2", 120)] == ["naive", "lipsdp-neuron"]
    assert [s.method for s in plan(resnet(), "linf", 120)] == ["naive"]
    assert all(s.skip is None for s in plan(mlp(), "l2", 120))
    assert not is_structured(mlp()) and is_structured(resnet()) and is_structured(convnet())
    assert default_time_limit(mlp()) == AUTO_TIME_LIMIT == 120
    assert default_time_limit(convnet()) == STRUCTURED_TIME_LIMIT == 300


def test_auto_is_the_smallest_certified_stage_and_never_above_naive():
    net = mlp()
    events = []
    r = lipverify.bound(net, progress=events.append)
    stages = r.details["auto_stages"]
    assert [s["method"] for s in stages] == ["naive", "ldlt-fast", "lipsdp-neuron"]
    assert all(s["certified"] for s in stages)
    assert r.certified and r.bound == min(s["bound"] for s in stages)
    assert r.method == r.details["auto_choice"] == "lipsdp-neuron"
    for name in ("naive", "ldlt-fast", "lipsdp-neuron"):
        alone = lipverify.bound(net, method=name)
        assert r.bound <= alone.bound * (1 + 1e-9)
    assert stages[0]["bound"] == lipverify.bound(net, method="naive").bound
    assert [(e.index, e.state) for e in events] == [(1, "running"), (1, "done"), (2, "running"),
                                                    (2, "done"), (3, "running"), (3, "done")]
    assert all(isinstance(e, StageEvent) for e in events)
    assert events[-2].best == stages[1]["bound"] and events[-1].best == r.bound
    assert events[0].best is None
    assert str(events[-1]).startswith("auto stage 3/3 lipsdp-neuron: ")


def test_a_certified_sdp_above_naive_is_not_returned(monkeypatch):
    """auto takes the minimum: a (valid but loose) certified bound above naive loses."""
    net = mlp()
    naive = lipverify.bound(net, method="naive")
    get_method("naive")

    def loose(network, **kw):
        return MethodOutput(bound=10 * naive.bound, certified=True)

    for name in ("lipsdp-neuron", "ldlt-fast"):
        monkeypatch.setitem(METHODS, name, replace(METHODS[name], fn=loose))
    r = lipverify.bound(net)
    assert r.method == "naive" and r.bound == naive.bound and r.certified
    assert [s["bound"] for s in r.details["auto_stages"]][1:] == [10 * naive.bound] * 2


def test_uncertified_stage_never_replaces_a_certified_one(monkeypatch):
    net = mlp()
    get_method("naive")
    monkeypatch.setitem(METHODS, "lipsdp-neuron", replace(
        METHODS["lipsdp-neuron"], fn=lambda network, **kw: MethodOutput(bound=1e-6,
                                                                        certified=False)))
    r = lipverify.bound(net)
    assert r.method == "ldlt-fast" and r.certified and r.bound > 1e-6


def test_failing_and_oversized_stages_are_noted_and_skipped(monkeypatch):
    net = mlp()
    get_method("naive")

    def too_big(network, **kw):
        raise MemoryError("a dense 1e6 x 1e6 matrix")

    monkeypatch.setitem(METHODS, "lipsdp-neuron", replace(METHODS["lipsdp-neuron"], fn=too_big))
    r = lipverify.bound(net)
    assert r.method == "ldlt-fast" and r.certified
    assert any(w.startswith("auto: lipsdp-neuron failed (a dense 1e6") for w in r.warnings)


def test_the_time_limit_is_shared_and_naive_always_runs():
    net = mlp((20, 64, 64, 64, 5))
    r = lipverify.bound(net, time_limit=1e-6)
    assert r.method == "naive" and r.certified
    assert any("not run (time limit reached)" in w for w in r.warnings)
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive"]


def test_the_time_limit_counts_from_started():
    """``started``: the limit covers what came before (the CLI passes its own start), so a
    call begun 9.9 s into a 10 s limit has no time left for any stage but naive."""
    import time

    net = mlp((20, 64, 64, 64, 5))
    r = lipverify.bound(net, time_limit=10, started=time.perf_counter() - 9.9)
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive"] and r.certified
    r = lipverify.bound(net, time_limit=10, started=time.perf_counter())
    assert [s["method"] for s in r.details["auto_stages"]] == \
        ["naive", "ldlt-fast", "lipsdp-neuron"]


def test_stage_options_are_checked_and_unused_ones_noted():
    r = lipverify.bound(mlp(), solver="ipm", budget=100)
    assert r.method == "lipsdp-neuron" and r.solver == "ipm"
    assert any("options not used by auto's stages: budget" in w for w in r.warnings)
    with pytest.raises(lipverify.UsageError, match="solver"):
        lipverify.bound(mlp(), solver="nope")


def test_residual_and_conv_nets():
    r = lipverify.bound(resnet(), lower_bound=True)
    assert r.certified and r.lower_bound <= r.bound <= lipverify.bound(resnet(),
                                                                      method="naive").bound
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive", "lipsdp-neuron"]
    c = lipverify.bound(convnet(), lower_bound=True)
    assert c.certified and c.lower_bound <= c.bound
    assert c.bound <= c.details["auto_stages"][0]["bound"]


def test_a_later_command_counts_from_its_own_start(monkeypatch):
    """In a long-lived process (CliRunner, a notebook) a command invoked long after the CLI was
    imported still gets its whole time limit: only the first command counts from the import."""
    import time

    model = Path(__file__).resolve().parents[1] / "models" / "digits_mlp_relu.onnx"
    CliRunner().invoke(main, ["--version"])  # a first command of this process
    clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + 1e6)  # a million s later
    res = CliRunner().invoke(main, ["bound", str(model), "--no-lower"])
    assert res.exit_code == 0, res.output
    assert "auto stage 3/3 lipsdp-neuron: 40.6574" in res.stderr


def test_cli_shows_the_stages_on_stderr():
    model = Path(__file__).resolve().parents[1] / "models" / "digits_mlp_relu.onnx"
    res = CliRunner().invoke(main, ["bound", str(model), "--no-lower"])
    assert res.exit_code == 0, res.output
    err = res.stderr
    assert "auto stage 1/3 naive: 44.7341" in err and "certified" in err
    assert "auto stage 3/3 lipsdp-neuron: 40.6574" in err and "best 40.6574" in err
    assert "L_2 <= 40.657400" in res.stdout


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_2b", "cifar_base_kw"])
def test_real_conv_and_residual_nets_beat_naive_within_the_time_limit(name):
    """Measured (results/bench-structured.md): resnet_2b 636.8 against naive 1513.4,
    cifar_base_kw 9.70 against 20.51, both with lipsdp-split in 300 s."""
    path = SHARED_MODELS / "onnx" / f"{name}.onnx"
    if not path.exists():
        pytest.skip("../shared is absent")
    r = lipverify.bound(path, time_limit=120)
    naive = r.details["auto_stages"][0]["bound"]
    assert r.certified and r.bound < naive


def test_auto_stops_once_its_bound_meets_the_lower_bound():
    """An orthogonal ReLU net: naive is exactly 1 (up to rounding) and the sampled lower bound
    reaches 1, so no SDP runs; a known lower bound passed in does the same."""
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    q2, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    net = Network.sequential([q1, q2], [RELU])
    r = lipverify.bound(net, lower_bound=True)
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive"]
    assert r.certified and r.lower_bound <= r.bound <= 1 + 1e-11  # naive: 1 + 2e-12
    assert r.lower_bound == pytest.approx(1.0, abs=1e-9)
    assert sum("within 1e-06 of the sampled lower bound" in w for w in r.warnings) == 2
    r = lipverify.bound(net, lower_bound=1.0)
    assert [s["method"] for s in r.details["auto_stages"]] == ["naive"]
    r = lipverify.bound(net)  # no lower bound: every stage runs
    assert len(r.details["auto_stages"]) == 3


def test_large_conv_chains_try_channel_multipliers_before_the_split():
    """Order > 6000: lipsdp-channel (one LMI, few variables) runs before lipsdp-split when its
    certificate fits in half the time limit; with a short limit only the split is planned."""
    rng = np.random.default_rng(0)
    ops = [Conv2d(rng.normal(size=(8, 1, 3, 3)), (1, 30, 30), pads=(1, 1, 1, 1), stride=(2, 2))]
    ops += [Conv2d(rng.normal(size=(8, 8, 3, 3)) / 8, (8, 15, 15), pads=(1, 1, 1, 1))
            for _ in range(3)]
    ops.append(rng.normal(size=(10, 1800)) / 40)
    net = Network.sequential(ops, [RELU] * 4, input_shape=(1, 30, 30))
    assert 900 + 4 * 1800 > 6000
    assert [s.method for s in plan(net, "l2", 300)] == ["naive", "ldlt-fast", "lipsdp-channel",
                                                        "lipsdp-split"]
    assert [s.method for s in plan(net, "l2", 10)][-1] == "lipsdp-split"
    assert [s.method for s in plan(mlp(), "l2", 300)][-1] == "lipsdp-neuron"


def test_dense_chains_above_the_order_limit_get_the_low_rank_solver():
    """Order 6128 > AUTO_MAX_ORDER (6000): a dense ReLU chain still gets lipsdp-neuron (the
    low-rank solver takes it); the same chain with GroupSort layers does not."""
    from lipverify.ir.activations import GroupSort
    from lipverify.methods.anytime import AUTO_MAX_ORDER

    widths = (128,) + (1000,) * 6 + (10,)
    net = mlp(widths)
    order = sum(widths[:-1])
    assert order > AUTO_MAX_ORDER
    stages = plan(net, "l2", 120)
    assert [s.method for s in stages] == ["naive", "ldlt-fast", "lipsdp-neuron"]
    assert stages[-1].skip is None
    rng = np.random.default_rng(0)
    qs = [np.linalg.qr(rng.standard_normal((a, a)))[0] for a in widths[:-1]]
    qs = [np.eye(b, a) @ q for q, a, b in zip(qs, widths, widths[1:])]
    gs = Network.sequential(qs, [GroupSort(2)] * (len(qs) - 1))
    assert plan(gs, "l2", 120)[-1].method != "lipsdp-neuron" or \
        plan(gs, "l2", 120)[-1].skip is not None
