"""Robustness bench (issue 17): certified robust accuracy, local bounds, pairwise timing.

    python results/robustness.py

A. rb_MLP_MNIST_1_LIP_GNP_groupsort on the 87 real MNIST images of ../shared/data: certified
   accuracy at eps = 0.5, 1.0, 1.58 from the global, pairwise and local bounds (curves in
   robustness-gnp.png).
B. mnist-net_256x2: local l2 bound (lipsdp-neuron) on radius-0.1 balls (pixels in [0, 1])
   around the first N images against the global certified bound: ratio and time per sample.
C. Pairwise margin bounds on 10-class MLPs: time against one global bound, reuse and full.

Writes results/robustness.{md,csv} headed by the machine description.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import SHARED, machine, write_csv  # noqa: E402

import lipverify  # noqa: E402
from lipverify.regions import Ball  # noqa: E402
from lipverify.regions.local import local_bound  # noqa: E402
from lipverify.robustness import certified_robustness, margin_bounds  # noqa: E402

DATA = SHARED.parent / "data" / "mnist_vnncomp2021.npz"
ONNX = SHARED / "onnx"
N_LOCAL = 10


def part_a(lines, rows):
    data = np.load(DATA)
    rep = certified_robustness(ONNX / "rb_MLP_MNIST_1_LIP_GNP_groupsort.onnx", data["x"],
                               data["y"], eps=[0.5, 1.0, 1.58], method="lipsdp-neuron",
                               local=True, domain=(0.0, 1.0), local_method="ldlt-fast",
                               time_limit=30)
    rep.plot(ROOT / "results" / "robustness-gnp.png")
    lines += ["## A. rb_MLP_MNIST_1_LIP_GNP_groupsort, 87 MNIST images", "",
              f"`certified_robustness(..., eps=[0.5, 1.0, 1.58], method='lipsdp-neuron', "
              f"local=True, domain=(0, 1), local_method='ldlt-fast', time_limit=30)`: global "
              f"L2 <= {rep.global_bound:.8g}, clean accuracy {100 * rep.clean_accuracy:.1f}%, "
              f"{rep.time_s:.0f} s in all. Curves: robustness-gnp.png.", "", rep.markdown(), "",
              *[f"- {n}" for n in rep.notes], ""]
    for r in rep.table():
        rows.append({"part": "A", "model": rep.model, "what": f"certified accuracy eps={r['eps']}",
                     **{k: r[k] for k in rep.kinds}})


def part_b(lines, rows):
    data = np.load(DATA)
    net = lipverify.load(ONNX / "mnist-net_256x2.onnx")
    glob = lipverify.bound(net, method="lipsdp-neuron")
    ratios, times = [], []
    lines += ["## B. mnist-net_256x2: local bound on radius-0.1 l2 balls", "",
              f"Global lipsdp-neuron: {glob.bound:.6g} ({glob.time_s:.1f} s).", "",
              "| image | local bound | global / local | seconds |", "|---|---|---|---|"]
    for k in range(N_LOCAL):
        t0 = time.perf_counter()
        res = local_bound(net, Ball(data["x"][k].ravel(), 0.1, domain=(0.0, 1.0)),
                          method="lipsdp-neuron")
        seconds = time.perf_counter() - t0
        ratio = glob.bound / res.bound
        ratios.append(ratio)
        times.append(seconds)
        lines.append(f"| {k} | {res.bound:.6g} | {ratio:.2f} | {seconds:.1f} |")
        rows.append({"part": "B", "model": "mnist-net_256x2", "what": f"image {k}",
                     "local": res.bound, "global": glob.bound, "ratio": ratio,
                     "seconds": seconds})
    lines += ["", f"Median ratio {statistics.median(ratios):.2f}, mean "
              f"{statistics.mean(ratios):.2f}, median time per sample "
              f"{statistics.median(times):.1f} s.", ""]


def part_c(lines, rows):
    lines += ["## C. Pairwise margin bounds (45 pairs) against one global bound", "",
              "| model | global method | global s | global bound | pairs | pairs s | "
              "ratio to global time | median L_ij / (sqrt 2 L) |",
              "|---|---|---|---|---|---|---|---|"]
    for path in (ROOT / "models" / "digits_mlp_relu.onnx", ONNX / "mnist-net_256x2.onnx"):
        net = lipverify.load(path)
        glob = lipverify.bound(net, method="lipsdp-neuron")
        for mode in ("reuse", "full"):
            t0 = time.perf_counter()
            mb = margin_bounds(net, method="lipsdp-neuron", global_result=glob, pair_solve=mode)
            seconds = time.perf_counter() - t0
            med = float(np.median(mb.values)) / (2 ** 0.5 * glob.bound)
            lines.append(f"| {net.name} | lipsdp-neuron | {glob.time_s:.2f} | {glob.bound:.6g} | "
                         f"{mode} | {seconds:.2f} | {seconds / glob.time_s:.1f} | {med:.3f} |")
            rows.append({"part": "C", "model": net.name, "what": f"pairs {mode}",
                         "global_s": glob.time_s, "pairs_s": seconds, "median_ratio": med})
    lines.append("")


def _old_sections(path: Path) -> dict[str, list[str]]:
    """The ``## A.`` / ``## B.`` / ``## C.`` sections of the last report, by part letter."""
    out: dict[str, list[str]] = {}
    if not path.exists():
        return out
    part = None
    for line in path.read_text().splitlines():
        if line.startswith("## ") and line[3:4] in "ABC" and line[4:5] == ".":
            part = line[3]
            out[part] = []
        if part:
            out[part].append(line)
    return out


def main(parts: str = "ABC") -> None:
    """Run ``parts``; the other parts' sections and rows are kept from the last report."""
    md, csv_path = ROOT / "results" / "robustness.md", ROOT / "results" / "robustness.csv"
    old = _old_sections(md)
    rows: list[dict] = []
    if csv_path.exists():
        with open(csv_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["part"] not in parts]
    sections = {}
    for name in parts:
        lines: list[str] = []
        {"A": part_a, "B": part_b, "C": part_c}[name](lines, rows)
        sections[name] = lines
        print("\n".join(lines), flush=True)
    head = ["# Robustness: certified accuracy, local bounds, margin bounds", "", machine(), "",
            "Command: `python results/robustness.py [PARTS]` (PARTS: letters of the sections "
            f"to re-run; this run: {parts}).", ""]
    body = [line for name in "ABC" for line in sections.get(name, old.get(name, []))]
    md.write_text("\n".join(head + body) + "\n")
    first = ("part", "model", "what")
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in first, k))
    rows.sort(key=lambda r: r["part"])
    write_csv(csv_path, keys, rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ABC")
