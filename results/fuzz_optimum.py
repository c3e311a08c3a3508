"""Tightness sweep (issue "LipSDP reaches its optimum"): lipsdp-neuron on random nets of every
kind against a conic solve of the same SDP (tests/test_fuzz_optimum.py has the generator, the
independent cvxpy reference and the checks). Writes results/fuzz-optimum.{csv,md}.

    python results/fuzz_optimum.py [nets per kind, default 50] [big: 1 (default) or 0]
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "results")]
from make_compare import machine  # noqa: E402
from test_fuzz_optimum import KINDS, TOL, check  # noqa: E402


def main(per_kind: int = 50, big: bool = True) -> None:
    warnings.simplefilter("ignore")
    rows = []
    for kind in KINDS:
        for seed in range(1000, 1000 + per_kind):
            t0 = time.perf_counter()
            excess, r = check(seed, kind, big)
            rows.append({"kind": kind, "seed": seed, "bound": r.bound, "excess": excess,
                         "outcome": r.status.outcome.value, "gap": r.status.gap,
                         "solver": r.solver, "seconds": time.perf_counter() - t0})
    with open(ROOT / "results" / "fuzz-optimum.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# lipsdp-neuron against the conic optimum ({len(rows)} random nets)", "",
             machine(), "",
             f"`python results/fuzz_optimum.py {per_kind} {int(big)}`: depth 1-"
             f"{8 if big else 4}, widths up to {32 if big else 16}, up to {64 if big else 40} "
             "hidden neurons, weights scaled by 10^U(-3,3) per layer or per net. Excess is "
             "(certified bound - optimum) / optimum; the optimum is the best of an independent "
             "cvxpy LipSDP (Clarabel, multipliers checked feasible) and lipverify's cvxpy form.",
             "", "| kind | nets | median excess | worst excess | > 1e-4 | labelled optimal "
             "| median s |", "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        sub = [r for r in rows if r["kind"] == kind]
        ex = [r["excess"] for r in sub]
        lines.append(f"| {kind} | {len(sub)} | {statistics.median(ex):.1e} | {max(ex):.1e} | "
                     f"{sum(e > TOL for e in ex)} | "
                     f"{sum(r['outcome'] == 'optimal' for r in sub)} | "
                     f"{statistics.median(r['seconds'] for r in sub):.2f} |")
    (ROOT / "results" / "fuzz-optimum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50,
         bool(int(sys.argv[2])) if len(sys.argv) > 2 else True)
