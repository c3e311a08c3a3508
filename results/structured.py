"""Default ``lipverify bound`` (anytime auto) on every convolutional and residual model (issue 16).

Each model runs ``lipverify bound MODEL --format json`` (the defaults: auto, 300 s on
conv/residual nets, the sampled lower bound beside it) in a fresh process under
``/usr/bin/time``, recording the certified bound, the stage that gave it, the naive bound
(auto's first stage), the sampled lower bound, the wall time and the peak resident memory.
Models: every conv/residual network in ../shared/models/onnx and the sample CNN of models/.
Writes results/bench-structured.{csv,md} headed by the machine description.

    python results/structured.py [TIME_LIMIT|-] [NAME ...]

With NAMEs, only the models whose file name contains one of them run; the other rows are kept
from the last results/bench-structured.csv.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import SHARED, machine, write_csv  # noqa: E402

import lipverify  # noqa: E402
from lipverify.methods.anytime import is_structured  # noqa: E402

FIELDS = ("model", "order", "bound", "certified", "stage", "naive", "naive_over_bound", "lower",
          "wall_s", "peak_mib", "stages")


def structured_models() -> list[Path]:
    paths = sorted((SHARED / "onnx").glob("*.onnx")) + sorted((ROOT / "models").glob("*.onnx"))
    out = []
    for path in paths:
        try:
            net = lipverify.load(path)
        except lipverify.LipverifyError:
            continue
        if is_structured(net):
            out.append(path)
    return out


def run(path: Path, limit: str | None) -> dict:
    cmd = ["/usr/bin/time", "-f", "PEAK %M", str(Path(sys.executable).parent / "lipverify"),
           "bound", str(path), "--format", "json", *(["--time-limit", limit] if limit else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    peak = next((int(line.split()[1]) / 1024 for line in proc.stderr.splitlines()
                 if line.startswith("PEAK ")), float("nan"))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        return {"model": path.stem, "bound": f"exit {proc.returncode}", "wall_s": wall,
                "peak_mib": peak}
    d = json.loads(line)
    stages = d["details"].get("auto_stages", [])
    naive = float(stages[0]["bound"]) if stages else float("nan")
    net = lipverify.load(path)
    return {"model": path.stem, "order": net.input_dim + sum(n.width for n in net.nodes),
            "bound": d["bound"], "certified": d["certified"], "stage": d["method"],
            "naive": naive, "naive_over_bound": naive / float(d["bound"]),
            "lower": d["lower_bound"], "wall_s": wall, "peak_mib": peak,
            "stages": "; ".join(f"{s['method']} {float(s['bound']):.6g} ({s['seconds']:.0f} s)"
                                for s in stages)}


def _parsed(row: dict) -> dict:
    """A row read back from the CSV, numbers as floats (for the table's formats)."""
    out = {}
    for k, v in row.items():
        try:
            out[k] = float(v) if k not in ("model", "stage", "stages", "certified") else v
        except ValueError:
            out[k] = v
    out["certified"] = row.get("certified") == "True"
    return out


def _cell(row: dict, key: str, fmt: str = "{:.8g}") -> str:
    v = row.get(key)
    return "" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))


def main(limit: str | None = None, names: list[str] | None = None) -> None:
    paths = structured_models()
    old = {}
    if names:
        paths = [p for p in paths if any(n in p.stem for n in names)]
        with open(ROOT / "results" / "bench-structured.csv", newline="") as fh:
            old = {r["model"]: r for r in csv.DictReader(fh)}
    new = {p.stem: run(p, limit) for p in paths}
    rows = [new.get(p.stem) or _parsed(old[p.stem]) for p in structured_models()
            if p.stem in new or p.stem in old]
    write_csv(ROOT / "results" / "bench-structured.csv", FIELDS, rows)
    lines = ["# Default `lipverify bound` on convolutional and residual networks", "",
             machine(), "", f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
             f"python results/structured.py{' ' + limit if limit else ''}` (each model: "
             "`lipverify bound MODEL --format json`, a fresh process; with model names, only "
             "those rows are re-run).", ""]
    notes = ROOT / "results" / "bench-structured-notes.md"  # hand-written: how rows were taken
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    lines += ["| model | LMI order | certified bound | stage | naive | naive / bound | lower | "
             "wall s | peak MiB | stages |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = partial(_cell, r)
        lines.append(f"| {r['model']} | {f('order')} | {f('bound')}"
                     f"{'' if r.get('certified') else ' (not certified)'} | {f('stage')} | "
                     f"{f('naive')} | {f('naive_over_bound', '{:.2f}')} | {f('lower')} | "
                     f"{f('wall_s', '{:.0f}')} | {f('peak_mib', '{:.0f}')} | {f('stages')} |")
    (ROOT / "results" / "bench-structured.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args and args[0] != "-" else None, args[1:] or None)
