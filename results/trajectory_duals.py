"""Dual lower bounds on LipSDP-Channel's optimum for the conv/residual models (issue 16):
the trajectory ascent of :mod:`lipverify.solvers.trajectory` (``RANKS`` trajectories, three
seeds and step sizes each, the best kept), set against the certified bound of the default
``auto`` run recorded in results/bench-structured.csv. ``gap <=`` is ``(L - L_dual) / L``:
how far that certified bound can be from the channel LMI's optimum (an upper estimate: the
ascent may stop below the optimum; on cifar_base_kw rank 4 meets the interior point's
optimum, results/channel-optimum.md). Writes results/trajectory-duals.{csv,md}.

    python results/trajectory_duals.py [MODEL.onnx ...]
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import machine, write_csv  # noqa: E402

import lipverify  # noqa: E402
import lipverify.solvers.trajectory as trajectory  # noqa: E402

MODELS = ("cifar_base_kw.onnx", "Convnet_avgpool.onnx", "resnet_2b.onnx",
          "resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx")
#: Trajectories per ascent: one, and the gap stage's ``TRAJECTORY_RANK`` (the better is kept:
#: rank 4 is tighter on cifar_base_kw and the ResNets, rank 1 on Convnet_avgpool).
RANKS = (1, 4)
FIELDS = ("model", "groups", "dual_L", "certified", "stage", "gap_at_most", "seconds")


def main(models=MODELS) -> None:
    shared = ROOT.parent / "shared" / "models" / "onnx"
    bench = {r["model"]: r for r in csv.DictReader(open(ROOT / "results" /
                                                        "bench-structured.csv"))}
    rows = []
    for name in models:
        net = lipverify.load(shared / name)
        t0, best = time.perf_counter(), 0.0
        for rank in RANKS:
            for seed, rate in ((0, 0.05), (1, 0.01), (2, 0.2)):
                trajectory.RATE = rate
                best = max(best, trajectory.ascent_bound(net, "channel", seed=seed,
                                                         rank=rank) or 0.0)
        key = name.removesuffix(".onnx")
        cert = float(bench[key]["bound"])
        low = math.sqrt(best)
        rows.append({"model": key, "groups": str(trajectory.groups(net, "channel")),
                     "dual_L": f"{low:.8g}", "certified": f"{cert:.8g}",
                     "stage": bench[key]["stage"], "gap_at_most": f"{(cert - low) / cert:.2g}",
                     "seconds": f"{time.perf_counter() - t0:.0f}"})
        print(rows[-1], flush=True)
    write_csv(ROOT / "results" / "trajectory-duals.csv", FIELDS, rows)
    lines = ["# Dual lower bounds on LipSDP-Channel for the conv and residual models", "",
             machine(), "", "Command: `python results/trajectory_duals.py` (each model: "
             "`lipverify.solvers.trajectory.ascent_bound(net, 'channel', rank=r)` for "
             f"r in {RANKS}, each with seeds 0/1/2 "
             "and Adam step sizes 0.05/0.01/0.2, the best kept; `s` is all of them). "
             "`certified` and `stage` are the default `lipverify bound` rows of "
             "results/bench-structured.csv. `dual L` is a lower bound on the optimum of "
             "LipSDP with channel multipliers, so `gap <=` bounds how far the certified "
             "bound is from that optimum; the ascent may stop below the optimum, "
             "so a large value does not show the certified bound is loose.", "",
             "| model | neurons per multiplier | dual L | certified | stage | gap <= | s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['groups']} | {r['dual_L']} | {r['certified']} | "
              f"{r['stage']} | {r['gap_at_most']} | {r['seconds']} |" for r in rows]
    (ROOT / "results" / "trajectory-duals.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or MODELS)
