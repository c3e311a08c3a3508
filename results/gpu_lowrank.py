"""The low-rank solver on a GPU against the CPU: the two largest chains of the full bench.

Prepared for a machine with a CUDA GPU (run it there in one call, ~15 minutes at most)::

    python results/gpu_lowrank.py [SECONDS]   # writes results/gpu-lowrank.{csv,md}

Each row is ``lipverify.bound(net, method="lipsdp-neuron", solver="lowrank", device=...)``
with a time limit (default 600 s): the dual ascent runs on the device, the multiplier fit,
polish and §8 certificate in float64 on the CPU. The table records the device, the solver's
own seconds (``solve_seconds``) and the whole bound's, the certified bound and the gap. On a
machine without a GPU the cuda rows say so and only the CPU rows run.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lipverify  # noqa: E402
from lipverify.batch.machine import describe  # noqa: E402
from lipverify.ir.activations import SlopeRestricted  # noqa: E402

CASES = [("784-1024x8-10", [784] + [1024] * 8 + [10], 8),
         ("784-2048x8-10", [784] + [2048] * 8 + [10], 2048),
         ("depth sweep 64x64", [64] * 65 + [10], 64)]
FIELDS = ("case", "device", "bound", "certified", "gap", "solve_seconds", "seconds", "status")


def network(widths, seed):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    return lipverify.Network.sequential(ws, [SlopeRestricted.named("relu")] * (len(ws) - 1))


def main(limit: float) -> None:
    import torch

    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    rows = []
    for name, widths, seed in CASES:
        net = network(widths, seed)
        for device in devices:
            t0 = time.perf_counter()
            out = lipverify.bound(net, method="lipsdp-neuron", solver="lowrank", device=device,
                                  time_limit=limit, lower_bound=False)
            rows.append({"case": name, "device": out.details.get("device", device),
                         "bound": out.bound, "certified": out.certified,
                         "gap": out.details.get("gap"),
                         "solve_seconds": out.details.get("solve_seconds"),
                         "seconds": time.perf_counter() - t0, "status": str(out.status)})
            print(rows[-1], flush=True)
    desc = f"{describe()}; GPU: {gpu}"
    with open(ROOT / "results" / "gpu-lowrank.csv", "w", newline="") as fh:
        fh.write(f"# {desc}\n")
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["# gpu-lowrank", "", f"Machine: {desc}", "",
             f"`python results/gpu_lowrank.py {limit:g}`: lipsdp-neuron with the low-rank "
             "solver on each device, the same time limit; certificates on the CPU.", "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])
                                for k in FIELDS) + " |" for r in rows]
    (ROOT / "results" / "gpu-lowrank.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 600.0)
