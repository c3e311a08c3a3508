"""The anytime ``auto`` method: the certified naive bound at once, then better ones stage by
stage until the time limit, and the smallest certified bound at the end.

Stages (:func:`plan`), each run on what is left of the time limit:

* ``naive`` (§6.1): certified spectral norms, seconds on any network; the floor of the
  result, so ``auto`` never returns more than it and never fails where it succeeds;
* ``ldlt-fast`` (§2b) on chains: closed-form multipliers, milliseconds to seconds;
* an SDP: ``lipsdp-neuron`` on chains whose chordal certificate fits (§3, §8) and on residual
  networks whose monolithic LMI is small (§5a); ``lipsdp-spectral`` (one small LMI per DFT
  frequency, §7) on stride-1 conv chains too large for that; ``lipsdp-split`` (a certified
  product over segments between cut nodes, each its own LMI) on larger chains and residual
  networks;
  ``lipsdp-wide`` (the same LMI reduced to order n_in + n_out) on one wide hidden layer.

A stage whose first §8 certificate is estimated to take longer than the time left is skipped
with a note (it could not return anything certified in time). A stage that fails (a solver
error, an LMI that does not fit in memory) is noted and the next one runs. Each stage's result
is certified on its own (§8) before it can replace the best one, so the smallest of them is a
certified bound: ``min`` of valid upper bounds is a valid upper bound.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> net = Network.sequential([np.eye(2), 3 * np.eye(2)], [SlopeRestricted.named("relu")])
>>> [s.method for s in plan(net, "l2", 120.0)]
['naive', 'ldlt-fast', 'lipsdp-neuron']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ..errors import LipverifyError, NotApplicableError, NumericalError, UsageError
from ..ir.linear import Conv2d
from ..ir.network import Network
from ..results import MethodOutput

#: Default time limit of ``auto`` on fully connected networks (seconds).
AUTO_TIME_LIMIT = 120.0
#: Default time limit of ``auto`` on convolutional and residual networks (seconds).
STRUCTURED_TIME_LIMIT = 300.0
#: Above this LMI order the chain's SDP stage is skipped (``ldlt-fast`` is the last stage).
AUTO_MAX_ORDER = 6000
#: Largest monolithic residual LMI handed to ``lipsdp-neuron``; larger ones use the split.
AUTO_MAX_DAG_ORDER = 2000
#: ldlt-fast's estimated time, as a multiple of its certificate's.
LDLT_FAST_FACTOR = 1.5
#: Later stages are skipped once the certified bound is within this relative distance of a
#: known lower bound.
TIGHT = 1e-6
#: A stage is not started with less than this many seconds left.
MIN_STAGE_SECONDS = 0.5
#: ... nor with less than this share of the time limit (it could not improve on the others).
MIN_STAGE_SHARE = 0.05


@dataclass(frozen=True)
class Stage:
    """One planned stage: ``method`` to run, or the ``skip`` reason it will not."""

    method: str
    skip: str | None = None


@dataclass(frozen=True)
class StageResult:
    """What one stage returned (or why it did not)."""

    method: str
    bound: float
    certified: bool
    seconds: float
    status: str

    def to_dict(self) -> dict:
        return {"method": self.method, "bound": self.bound, "certified": self.certified,
                "seconds": round(self.seconds, 4), "status": self.status}


def is_structured(network: Network) -> bool:
    """Convolutional or residual: the networks with the longer default time limit."""
    if not network.is_sequential:
        return True
    ops = [t.op for n in network.nodes for t in n.pre.terms] + \
        [t.op for t in network.output.terms]
    return any(isinstance(leaf, Conv2d) for op in ops for leaf in op.leaves())


def default_time_limit(network: Network) -> float:
    """120 s, or 300 s on convolutional and residual networks."""
    return STRUCTURED_TIME_LIMIT if is_structured(network) else AUTO_TIME_LIMIT


def _order(network: Network) -> int:
    return network.input_dim + sum(n.width for n in network.nodes)


def _sdp_stage(network: Network, norm: str, limit: float) -> Stage | None:
    """The SDP stage for ``network``, or a skipped one saying why (None: none applies)."""
    from ..lmi.chain import MAX_CERTIFICATE_BYTES, ChainLMI, dense_certificate_bytes
    from ..lmi.dag import DagLMI
    from .lipsdp import MIN_OVERRUN_SECONDS, certificate_seconds
    from .split import cuts
    from .split import plan as plan_segments
    from .wide import applicable as wide_applicable

    order = _order(network)
    if network.is_sequential and norm == "l2" and wide_applicable(network) is None and (
            order > AUTO_MAX_ORDER
            or dense_certificate_bytes(order) > MAX_CERTIFICATE_BYTES):
        return Stage("lipsdp-wide")  # one wide hidden layer: the reduced LMI, order n0 + m
    if network.is_sequential:
        if order > AUTO_MAX_ORDER and norm == "l2" and not is_structured(network) and \
                _lowrank_takes(network):
            name = "lipsdp-neuron"  # dense chains: the low-rank solver, O(r sum n_k^2) a step
        elif order > AUTO_MAX_ORDER:
            if norm == "l2" and len(plan_segments(network)) > 1:
                return Stage("lipsdp-split")
            return Stage("lipsdp-neuron", f"LMI order {order} > {AUTO_MAX_ORDER}, and no "
                                          "cut splits it into smaller segments")
        else:
            if dense_certificate_bytes(order) > MAX_CERTIFICATE_BYTES:
                return Stage("lipsdp-neuron", f"its certificate would not fit in memory "
                                              f"(order {order})")
            try:
                ChainLMI.from_network(network)  # every activation has a QC, and it fits
            except (NotApplicableError, MemoryError) as exc:
                return Stage("lipsdp-neuron", str(exc).splitlines()[0])
            name = "lipsdp-neuron"
    elif norm != "l2":
        return None
    elif order <= AUTO_MAX_DAG_ORDER:
        try:
            DagLMI.from_network(network)
        except (NotApplicableError, MemoryError) as exc:
            return Stage("lipsdp-neuron", str(exc).splitlines()[0])
        name = "lipsdp-neuron"
    elif _grouped_fits(network, limit):
        # one LMI over the whole network, clique-wise over its groups (§5c), with channel
        # multipliers: resnet_2b 317.7 in 300 s against lipsdp-split's 517.7
        name = "lipsdp-channel"
    elif len(cuts(network)) > 0:
        return Stage("lipsdp-split")
    else:
        return Stage("lipsdp-split", f"no cut node splits the residual LMI of order {order}")
    cost = certificate_seconds(network)
    if norm == "l2" and cost > max(limit, MIN_OVERRUN_SECONDS):
        return Stage(name, f"its first certificate would take about {cost:.3g} s, over the "
                           f"{limit:g} s time limit")
    return Stage(name)


def _grouped_fits(network: Network, limit: float) -> bool:
    """Whether a residual network's LMI has a grouped form (§5c) whose LMI data and clique
    certificate fit in memory, and whose certificate takes at most half of ``limit`` (the
    rest goes to the dual start and the solver: resnet_3b2, certificate estimate 106 s,
    measured 84 s, certified 816.7 in 289 s where lipsdp-split gave 6166)."""
    from ..lmi.chain import MAX_CERTIFICATE_BYTES
    from ..lmi.dag import dag_bytes, network_groups
    from .lipsdp import certificate_seconds

    return len(network_groups(network)) > 2 and \
        dag_bytes(network) <= MAX_CERTIFICATE_BYTES and \
        certificate_seconds(network) <= limit / 2


def _lowrank_takes(network: Network) -> bool:
    """Whether the low-rank solver takes this chain's neuron LMI (and it fits in memory)."""
    from ..lmi.chain import ChainLMI
    from ..solvers.lowrank import lowrank_reason

    try:
        return lowrank_reason(ChainLMI.from_network(network)) is None
    except (NotApplicableError, MemoryError):
        return False


def plan(network: Network, norm: str, limit: float) -> list[Stage]:
    """The stages ``auto`` runs on ``network`` within ``limit`` seconds (module docstring)."""
    from .lipsdp import MIN_OVERRUN_SECONDS, certificate_seconds

    stages = [Stage("naive")]
    sdp = _sdp_stage(network, norm, limit)
    spectral = _spectral_stage(network, norm, limit)
    if spectral is not None and sdp is not None and sdp.skip is None and \
            sdp.method == "lipsdp-neuron":
        spectral = None  # neuron multipliers on the exact LMI: tighter where they fit
    if spectral is not None:
        # a stride-1 conv chain too large for neuron multipliers: one small LMI per
        # frequency, tighter than ldlt-fast on every sweep net measured (8x4 29.38 against
        # 36.48, 8x8 422.4 against 1032, 16x2 8.157 against 9.274) and interruptible, where
        # ldlt-fast is not (16x2: 322 s against its estimate of at most 75 s)
        stages.append(Stage("ldlt-fast", "lipsdp-spectral applies, and is tighter on stride-1 "
                                         "conv chains"))
        stages.append(spectral)
        return stages
    if network.is_sequential and norm == "l2":
        # ldlt-fast's multipliers (a dense factorisation per layer, not interruptible) add to
        # its §8 certificate: measured 73 s against a 45 s certificate estimate on a
        # 16-channel 14x14 conv chain, 31 s against 35 s on an 8-channel one
        cost = LDLT_FAST_FACTOR * certificate_seconds(network)
        stages.append(Stage("ldlt-fast", None if cost <= max(limit, MIN_OVERRUN_SECONDS) else
                            f"its multipliers and certificate would take about {cost:.3g} s, "
                            f"over the {limit:g} s time limit"))
    if sdp is not None and sdp.method == "lipsdp-split" and network.is_sequential \
            and is_structured(network):
        channel = _channel_stage(network, limit)
        if channel is not None:
            stages.append(channel)  # one LMI beats a product of segments when it fits
    if sdp is not None:
        stages.append(sdp)
    return stages


def _spectral_stage(network: Network, norm: str, limit: float) -> Stage | None:
    """``lipsdp-spectral`` where its per-frequency form applies (a stride-1 conv chain with a
    small output map), skipped when its certificate would take more than half the limit."""
    if norm != "l2" or not network.is_sequential or not is_structured(network):
        return None
    from ..errors import NotApplicableError
    from ..lmi.spectral import SpectralLMI
    from .spectral import certificate_seconds

    try:
        lmi = SpectralLMI.from_network(network)
    except NotApplicableError:
        return None
    cost = certificate_seconds(lmi)
    if cost > limit / 2:
        return Stage("lipsdp-spectral", f"its certificate would take about {cost:.3g} s, over "
                                        f"half the {limit:g} s time limit")
    return Stage("lipsdp-spectral")


def _channel_stage(network: Network, limit: float) -> Stage | None:
    """``lipsdp-channel`` on a conv chain too large for neuron multipliers: one multiplier
    per conv output channel keeps the solver's variables few (measured on cifar_base_kw,
    order 6244: 6.37 in 282 s, against 9.71 from lipsdp-split); None when its chordal
    certificate would take more than half the time limit or not fit in memory."""
    from ..lmi.chain import MAX_CERTIFICATE_BYTES, dense_certificate_bytes
    from .lipsdp import certificate_seconds

    sizes = network.widths
    largest_clique = max(a + b for a, b in zip(sizes, sizes[1:-1]))
    if certificate_seconds(network) > limit / 2 or \
            dense_certificate_bytes(largest_clique) > MAX_CERTIFICATE_BYTES:
        return None
    return Stage("lipsdp-channel")


Runner = Callable[[str, dict], MethodOutput]


@dataclass(frozen=True)
class StageEvent:
    """What :func:`run_stages` tells its ``progress`` callback: a stage is ``"running"``,
    ``"done"``, ``"skipped"`` or ``"failed"``; ``str(event)`` is a one-line description."""

    index: int
    total: int
    method: str
    state: str
    text: str
    best: float | None = None

    def __str__(self) -> str:
        return f"auto stage {self.index}/{self.total} {self.method}: {self.text}"


def _tell(progress, index: int, total: int, method: str, state: str, text: str, best) -> None:
    if progress is not None:
        progress(StageEvent(index, total, method, state, text,
                            None if best is None else float(best.bound)))


def run_stages(network: Network, norm: str, options: dict, run: Runner,
               progress: Callable[[StageEvent], None] | None = None,
               lower: float | None = None):
    """Run :func:`plan`'s stages with ``run(method, options)``; returns ``(method, output,
    stage results, notes)`` for the smallest certified bound. ``options["time_limit"]`` (or
    :func:`default_time_limit`) is shared by all stages; ``progress`` gets a
    :class:`StageEvent` as each stage starts and ends. With a known ``lower`` bound, stages
    stop once the best certified bound is within :data:`TIGHT` of it (nothing left to gain)."""
    limit = options.get("time_limit") or default_time_limit(network)
    start = time.perf_counter()
    stages = plan(network, norm, limit)
    best_name, best, results, notes = None, None, [], []
    for k, stage in enumerate(stages):
        left = limit - (time.perf_counter() - start)
        say = partial(_tell, progress, k + 1, len(stages), stage.method)
        if stage.skip is not None:
            notes.append(f"auto: {stage.method} skipped ({stage.skip})")
            say("skipped", f"skipped ({stage.skip})", best)
            continue
        if best is not None and best.certified and lower is not None and \
                best.bound <= lower * (1.0 + TIGHT):
            notes.append(f"auto: {stage.method} not run (the certified {best.bound:.9g} is "
                         f"within {TIGHT:g} of the sampled lower bound {lower:.9g})")
            say("skipped", "not run, the bound is tight", best)
            continue
        if best is not None and left < max(MIN_STAGE_SECONDS, MIN_STAGE_SHARE * limit):
            notes.append(f"auto: {stage.method} not run (time limit reached)")
            say("skipped", "not run, time limit reached", best)
            continue
        say("running", f"running ({left:.0f} s left"
            + (f", best {best.bound:.9g})" if best is not None else ")"), best)
        t0 = time.perf_counter()
        try:
            out = run(stage.method, {**options, "time_limit": max(left, MIN_STAGE_SECONDS)})
        except UsageError:
            raise
        except (LipverifyError, MemoryError) as exc:  # noted; the best so far stands
            got = exc.best if isinstance(exc, NumericalError) else None
            if isinstance(got, MethodOutput) and got.certified:
                out = got
                notes.append(f"auto: {stage.method} failed ({str(exc).splitlines()[0]}); "
                             "its best certified bound is kept")
            else:
                if best is None:  # the naive floor itself failed: nothing to fall back on
                    raise
                notes.append(f"auto: {stage.method} failed ({str(exc).splitlines()[0]})")
                say("failed", f"failed ({str(exc).splitlines()[0]})", best)
                continue
        seconds = time.perf_counter() - t0
        results.append(StageResult(stage.method, float(out.bound), bool(out.certified),
                                   seconds, str(out.status)))
        better = out.certified and math.isfinite(out.bound) and (
            best is None or not best.certified or out.bound < best.bound)
        if best is None or better:
            best_name, best = stage.method, out
        say("done", f"{out.bound:.9g} {'certified' if out.certified else 'NOT certified'} "
            f"({seconds:.2f} s); best {best.bound:.9g} ({best_name})", best)
    return best_name, best, results, notes
