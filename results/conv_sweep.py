"""Conv depth sweep (issue 16): random 3x3 conv chains on 14x14 inputs, GLipSDP's scalability
setting, under the default ``auto`` (anytime) with a time limit.

Each network: input 1x14x14, ``depth`` conv layers (3x3, padding 1, ``channels`` out, ReLU,
He-scaled Gaussian kernels, seed = channels * 100 + depth), then a dense map to 10 outputs.
Each runs ``lipverify.bound(net, time_limit=LIMIT, lower_bound=True)`` in a fresh process,
recording the certified bound, the stage that gave it, naive, the sampled lower bound, the
time and the process's peak memory. Writes results/conv-sweep.{csv,md}.

    python results/conv_sweep.py [LIMIT_SECONDS] [CHANNELS,...] [DEPTHS,...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import machine, write_csv  # noqa: E402

CHILD = """
import json, resource, sys, time
import numpy as np, lipverify
from lipverify.ir.linear import Conv2d
c, d, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(c * 100 + d)
ops, cin = [], 1
for _ in range(d):
    k = rng.normal(size=(c, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))
    ops.append(Conv2d(k, (cin, 14, 14), pads=(1, 1, 1, 1)))
    cin = c
ops.append(rng.normal(size=(10, c * 196)) / np.sqrt(c * 196))
net = lipverify.Network.sequential(ops, [lipverify.SlopeRestricted.named("relu")] * d,
                                   input_shape=(1, 14, 14), name=f"conv {c}x{d}")
t0 = time.perf_counter()
r = lipverify.bound(net, time_limit=limit, lower_bound=True)
st = r.details.get("auto_stages", [])
print(json.dumps({"bound": r.bound, "certified": r.certified, "stage": r.method,
                  "naive": st[0]["bound"] if st else None, "lower": r.lower_bound,
                  "gap": r.status.gap,
                  "time_s": time.perf_counter() - t0,
                  "stages": "; ".join(f"{s['method']} {float(s['bound']):.6g} "
                                      f"({s['seconds']:.0f} s)" for s in st),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FIELDS = ("channels", "depth", "order", "bound", "certified", "stage", "gap", "naive", "lower",
          "time_s", "peak_mib", "stages")


def main(limit: str = "60", channels: str = "8,16,32", depths: str = "2,4,8,16") -> None:
    rows = []
    for c in map(int, channels.split(",")):
        for d in map(int, depths.split(",")):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(c), str(d), limit],
                                  capture_output=True, text=True, timeout=3600)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
            row = {"channels": c, "depth": d, "order": 196 + d * c * 196}
            row.update(json.loads(line) if line else {"bound": f"exit {proc.returncode}"})
            rows.append(row)
            print(row, flush=True)
    rows = _merged(rows)
    write_csv(ROOT / "results" / "conv-sweep.csv", FIELDS, rows)
    lines = ["# Conv depth sweep: random 3x3 conv chains on 14x14 inputs, default auto", "",
             machine(), "", f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
             f"python results/conv_sweep.py {limit} {channels} "
             f"{depths}` (time limit {limit} s per network, a fresh process each).", "",
             "How this table was taken: each row builds the network below in a fresh process "
             "and runs the default `auto` (`lipverify.bound(net, time_limit=LIMIT, "
             "lower_bound=True)`), so `s` includes naive, every stage that ran, the §8 "
             "certificates and the sampled lower bound; `peak MiB` is the process's maximum "
             "resident set. `gap` is the relative optimality gap (L - L_dual) / L of the "
             "stage that gave the bound, from a dual point of its own formulation (blank: not "
             "measured). Networks: input 1x14x14, `depth` 3x3 convs (padding 1, `channels` "
             "out, ReLU, He-scaled Gaussian kernels, seed channels * 100 + depth), then a "
             "dense map to 10 outputs. A run with some channels/depths replaces only those "
             "rows (the command above is the last one); the others are kept from earlier "
             "runs of the same script.", "",
             "| channels | depth | LMI order | certified bound | stage | gap | naive | lower | s | "
             "peak MiB | stages |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def num(key, fmt="{:.6g}", r=r):
            v = r.get(key)
            return fmt.format(v) if isinstance(v, (int, float)) else str(v or "")
        lines.append(f"| {r['channels']} | {r['depth']} | {r['order']} | {num('bound')}"
                     f"{'' if r.get('certified') else ' (not certified)'} | {r.get('stage', '')} "
                     f"| {num('gap', '{:.2g}')} | {num('naive')} | {num('lower')} | "
                     f"{num('time_s', '{:.0f}')} | "
                     f"{num('peak_mib', '{:.0f}')} | {r.get('stages', '')} |")
    (ROOT / "results" / "conv-sweep.md").write_text("\n".join(lines) + "\n")


def _merged(rows: list[dict]) -> list[dict]:
    """The rows just measured, plus the previous file's rows for other networks (so one row
    can be re-run alone); sorted by channels and depth."""
    import csv

    path = ROOT / "results" / "conv-sweep.csv"
    done = {(r["channels"], r["depth"]) for r in rows}
    old = []
    if path.exists():
        with open(path) as fh:
            for r in csv.DictReader(fh):
                key = (int(r["channels"]), int(r["depth"]))
                if key in done:
                    continue
                for k in ("bound", "naive", "lower", "gap", "time_s", "peak_mib"):
                    try:
                        r[k] = float(r[k])
                    except (KeyError, TypeError, ValueError):
                        r[k] = r.get(k) or None
                r["channels"], r["depth"] = key
                r["certified"] = r.get("certified") in ("True", "true", "1")
                old.append(r)
    return sorted(rows + old, key=lambda r: (r["channels"], r["depth"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
