"""Stored jobs as flat table rows, CSV and Markdown (``lipverify results export``).

``tightness`` is an upper bound divided by the best witnessed lower bound of the same model,
norm and output rows (from the ``lower`` method or any job run with ``lower_bound``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from .store import JobRecord

FIELDS = (
    "model", "rows", "method", "norm", "options", "status", "bound", "certified", "kind",
    "lower_bound", "tightness", "result_status", "solver", "time_s", "layers",
    "robust_accuracy", "error", "finished_at", "key",
)
#: Per-model options shown in the ``rows`` column, not in ``options``.
_MODEL_COLUMN = ("output_rows",)


def _robust(res) -> str:
    """Certified accuracy per eps and bound kind, e.g. ``0.5: global 48.3% pairwise 50.6%``."""
    rob = None if res is None else res.details.get("robustness")
    if not isinstance(rob, dict):
        return ""
    return "; ".join(f"{row['eps']:g}: " + " ".join(f"{k} {100 * v:.1f}%" for k, v in row.items()
                                                     if k != "eps")
                     for row in rob.get("certified_accuracy", ()))


def group_key(r: JobRecord) -> tuple:
    return r.model_sha256, r.norm, tuple(r.options.get("output_rows") or ())


def best_lower_bounds(records: Sequence[JobRecord]) -> dict[tuple, float]:
    """(model sha256, norm, output rows) -> the largest witnessed lower bound."""
    best: dict[tuple, float] = {}
    for r in records:
        res = r.result
        if res is None:
            continue
        value = res.bound if res.kind == "lower" else res.lower_bound
        if value is not None and value == value:
            best[group_key(r)] = max(best.get(group_key(r), 0.0), float(value))
    return best


def table_rows(records: Sequence[JobRecord]) -> list[dict[str, str]]:
    """One dict of display strings per stored job, keys :data:`FIELDS`."""
    lows = best_lower_bounds(records)
    rows = []
    for r in records:
        res = r.result
        low = lows.get(group_key(r))
        tight = (res.bound / low if res is not None and res.kind == "upper" and low else None)
        rows.append({
            "model": r.model,
            "rows": ",".join(map(str, r.options.get("output_rows") or ())),
            "method": r.method,
            "norm": r.norm,
            "options": " ".join(f"{k}={v}" for k, v in sorted(r.options.items())
                                if k not in (*_MODEL_COLUMN, "robustness")),
            "status": r.status,
            "bound": "" if res is None else f"{res.bound:.10g}",
            "certified": "" if res is None else str(res.certified),
            "kind": "" if res is None else res.kind,
            "lower_bound": "" if res is None or res.lower_bound is None
            else f"{res.lower_bound:.10g}",
            "tightness": "" if tight is None else f"{tight:.4g}",
            "result_status": "" if res is None else str(res.status),
            "solver": "" if res is None else (res.solver or ""),
            "time_s": "" if res is None else f"{res.time_s:.3f}",
            "layers": "" if res is None else "-".join(map(str, res.layers)),
            "robust_accuracy": _robust(res),
            "error": (r.error or "").splitlines()[0] if r.error else "",
            "finished_at": r.finished_at,
            "key": r.key,
        })
    return rows


def machines(records: Sequence[JobRecord]) -> list[str]:
    return sorted({r.machine for r in records if r.machine})


def to_csv(records: Sequence[JobRecord]) -> str:
    """CSV with a ``# machine: ...`` line per machine first (read with ``comment="#"``)."""
    buf = io.StringIO()
    for m in machines(records):
        buf.write(f"# machine: {m}\n")
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_rows(records))
    return buf.getvalue()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(records: Sequence[JobRecord], title: str = "lipverify batch results") -> str:
    fields = [f for f in FIELDS if f not in ("finished_at", "key")]
    lines = [f"# {title}", ""]
    lines += [f"Machine: {m}  " for m in machines(records)]
    lines += [
        "",
        "`certified` is the §8 check; `lower` is a witnessed lower bound; `tightness` is "
        "bound / best lower bound of the model; times in seconds.",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    lines += ["| " + " | ".join(_cell(row[f]) for f in fields) + " |"
              for row in table_rows(records)]
    return "\n".join(lines) + "\n"


FORMATS = {"csv": to_csv, "md": to_markdown}


def export(records: Sequence[JobRecord], fmt: str, path: str | Path | None = None) -> str:
    """Render ``records`` as ``fmt`` (csv or md); write to ``path`` when given."""
    text = FORMATS[fmt](records)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text
