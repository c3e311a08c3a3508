"""Plots of stored results (matplotlib, no pyplot state, no display needed): PNG and PDF.

* ``batch-bounds-<norm>``: the bound of every method on every model, log scale; hatched
  bars are not certified upper bounds (estimates, lower bounds, failed checks);
* ``batch-tightness-<norm>``: upper bound / best witnessed lower bound, log scale (1 = tight);
* ``batch-time-<norm>``: time against network size (neurons) per method, log-log.

A value a log axis cannot show (NaN, infinite, zero or negative: a stored failed bound) is left
out of its plot, and :func:`plot_results` says which in ``notes``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .export import best_lower_bounds, group_key
from .manifest import MODEL_KEYS
from .store import JobRecord

FORMATS = ("png", "pdf")


def _model_labels(records: Sequence[JobRecord]) -> dict[tuple, str]:
    """(model sha256, output rows) -> a short label: the file stem, else the file name, else
    the path when those collide; plus the output rows."""
    keys = {(r.model_sha256, tuple(r.options.get("output_rows") or ())): r.model
            for r in records}
    short = {}
    for shorten in (lambda p: Path(p).stem, lambda p: Path(p).name, str):
        names = defaultdict(set)
        for (sha, _), path in keys.items():
            names[shorten(path)].add(sha)
        for key, path in keys.items():
            if key not in short and len(names[shorten(path)]) == 1:
                short[key] = shorten(path)
    return {key: short.get(key, path) + (f" [rows {','.join(map(str, key[1]))}]"
                                         if key[1] else "")
            for key, path in keys.items()}


def _series_labels(records: Sequence[JobRecord]) -> dict[str, str]:
    """key -> method, plus the bound options that differ between its runs (e.g. time_limit)."""
    variants = defaultdict(set)
    for r in records:
        variants[r.method].add(_variant(r))
    return {r.key: r.method + (f" {_variant(r)}" if len(variants[r.method]) > 1 and _variant(r)
                               else "") for r in records}


def _colors(series: dict[str, str]) -> dict[str, str]:
    """The same colour for a method in every plot."""
    names = sorted(set(series.values()))
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _variant(r: JobRecord) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(r.options.items()) if k not in MODEL_KEYS)


#: Above this many models the bar charts are horizontal (one row per model).
HORIZONTAL = 12
#: Left-out values listed by name in a note (the rest are counted).
NAMED_SKIPS = 5


def _plottable(value) -> bool:
    """A value a log axis can show: a finite number above 0."""
    try:
        return math.isfinite(value) and value > 0
    except TypeError:
        return False


def _skip_note(notes: list[str] | None, what: str, skipped: list[str]) -> None:
    if notes is None or not skipped:
        return
    named = ", ".join(skipped[:NAMED_SKIPS])
    more = f" and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
    notes.append(f"{what}: left out {len(skipped)} value(s) a log scale cannot show "
                 f"(NaN, infinite or <= 0): {named}{more}")


def _where(r: JobRecord) -> str:
    return f"{r.model} [{r.method}]"


def _figure(n_groups: int, horizontal: bool = False):
    from matplotlib.figure import Figure

    size = (9.0, max(4.0, 0.32 * n_groups + 1.5)) if horizontal else (
        max(7.0, 0.55 * n_groups + 2.5), 4.8)
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _bars(ax, table: dict[str, dict[str, float]], hatched: set[tuple[str, str]],
          models: list[str], colors: dict[str, str]) -> None:
    """Grouped bars (one group per model, one bar per series), log value axis."""
    horizontal = len(models) > HORIZONTAL
    series = sorted(table)
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        pos = [m + (i - (len(series) - 1) / 2) * width for m in range(len(models))]
        vals = [table[name].get(model, float("nan")) for model in models]
        style = {"label": name, "color": colors[name]}
        bars = (ax.barh(pos, vals, width, **style) if horizontal
                else ax.bar(pos, vals, width, **style))
        for bar, model in zip(bars, models):
            if (name, model) in hatched:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
    if horizontal:
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top
        ax.set_xscale("log")
        ax.grid(axis="x", which="both", alpha=0.3)
    else:
        ax.set_xticks(range(len(models)), models, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, max(len(series), 1)))


def _value_label(ax, text: str, n_models: int) -> None:
    (ax.set_xlabel if n_models > HORIZONTAL else ax.set_ylabel)(text)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def plot_bounds(records, out: Path, norm: str, notes: list[str] | None = None) -> list[Path]:
    models, series = _model_labels(records), _series_labels(records)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    hatched = set()
    skipped = []
    for r in records:
        model = models[r.model_sha256, tuple(r.options.get("output_rows") or ())]
        if not _plottable(r.result.bound):
            skipped.append(f"{_where(r)} = {r.result.bound}")
            continue
        table[series[r.key]][model] = r.result.bound
        if not (r.result.kind == "upper" and r.result.certified):
            hatched.add((series[r.key], model))
    _skip_note(notes, f"batch-bounds-{norm}", skipped)
    order = sorted({m for row in table.values() for m in row})
    fig, ax = _figure(len(order), len(order) > HORIZONTAL)
    if table:
        _bars(ax, table, hatched, order, _colors(series))
    _value_label(ax, f"Lipschitz bound ({norm})", len(order))
    ax.set_title(f"Lipschitz bounds ({norm}); hatched: not a certified upper bound",
                 fontsize=10)
    return _save(fig, out, f"batch-bounds-{norm}")


def plot_tightness(records, out: Path, norm: str, notes: list[str] | None = None) -> list[Path]:
    models, series = _model_labels(records), _series_labels(records)
    lows = best_lower_bounds(records)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    hatched = set()
    skipped = []
    for r in records:
        low = lows.get(group_key(r))
        if r.result.kind != "upper" or not low:
            continue
        model = models[r.model_sha256, tuple(r.options.get("output_rows") or ())]
        ratio = r.result.bound / low if _plottable(r.result.bound) and _plottable(low) else None
        if not _plottable(ratio):
            skipped.append(f"{_where(r)} = {r.result.bound} / {low}")
            continue
        table[series[r.key]][model] = ratio
        if not r.result.certified:
            hatched.add((series[r.key], model))
    _skip_note(notes, f"batch-tightness-{norm}", skipped)
    order = sorted({m for row in table.values() for m in row})
    fig, ax = _figure(len(order), len(order) > HORIZONTAL)
    if table:
        _bars(ax, table, hatched, order, _colors(series))
        (ax.axvline if len(order) > HORIZONTAL else ax.axhline)(1.0, color="black",
                                                                linewidth=0.8)
    _value_label(ax, "upper bound / best lower bound", len(order))
    ax.set_title(f"Tightness ({norm}): 1 = matches a witnessed lower bound", fontsize=10)
    return _save(fig, out, f"batch-tightness-{norm}")


def plot_times(records, out: Path, norm: str, notes: list[str] | None = None) -> list[Path]:
    series = _series_labels(records)
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    skipped = []
    for r in records:
        neurons = sum(r.result.layers[1:])
        if not (_plottable(r.result.time_s) or r.result.time_s == 0) or neurons <= 0:
            skipped.append(f"{_where(r)} time {r.result.time_s}")
            continue
        points[series[r.key]].append((neurons, max(r.result.time_s, 1e-4)))
    _skip_note(notes, f"batch-time-{norm}", skipped)
    fig, ax = _figure(6)
    colors = _colors(series)
    for name, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="none",
                label=name, color=colors[name])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network size (neurons, hidden and output)")
    ax.set_ylabel("time (s)")
    ax.set_title(f"Time against network size ({norm})", fontsize=10)
    ax.grid(which="both", alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    return _save(fig, out, f"batch-time-{norm}")


PLOTS = (plot_bounds, plot_tightness, plot_times)


def plot_results(records: Sequence[JobRecord], out: str | Path = "results",
                 notes: list[str] | None = None) -> list[Path]:
    """Write every plot, per norm, as PNG and PDF into ``out``; return the files written.
    Values a log axis cannot show are left out, each plot's listed in ``notes`` when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.status == "ok" and r.result is not None]
    written: list[Path] = []
    for norm in sorted({r.norm for r in ok}):
        subset = [r for r in ok if r.norm == norm]
        for plot in PLOTS:
            written += plot(subset, out, norm, notes)
    return written
