"""Do time limits hold? ``lipverify bound MODEL --time-limit T`` on every model in
../shared/models (and the sample models), each in its own process with a hard cap, recording
the wall time of the whole command and the method's own ``time_s``. Writes
results/time-limits.{csv,md} headed by the machine description.

    python results/time_limits.py [T seconds, default 10] [methods, default auto,lipsdp-neuron]
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import SHARED, machine  # noqa: E402

SUFFIXES = (".onnx", ".npz", ".mat", ".nnet", ".pth")


def models() -> list[Path]:
    found = sorted(p for p in SHARED.rglob("*") if p.suffix in SUFFIXES
                   and "negative" not in p.parts and not re.search(r"_seed[1-9]", p.name))
    return found + sorted((ROOT / "models").glob("*.onnx"))


def run(model: Path, method: str, limit: float) -> dict:
    cmd = [sys.executable, "-m", "lipverify_cli.main", "bound", str(model), "-m", method,
           "--time-limit", str(limit), "--format", "json"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20 * limit + 60)
        wall, code = time.perf_counter() - t0, proc.returncode
        out = proc.stdout
    except subprocess.TimeoutExpired:
        wall, code, out = time.perf_counter() - t0, "killed", ""
    row = {"model": model.name, "method": method, "limit": limit, "exit": code,
           "wall_s": round(wall, 2), "time_s": "", "bound": "", "status": ""}
    try:
        res = json.loads(out)
        row.update(time_s=round(res["time_s"], 2), bound=res["bound"],
                   status=res["status"]["outcome"] if isinstance(res["status"], dict)
                   else res["status"])
    except (ValueError, KeyError, TypeError):
        pass
    return row


def main(limit: float = 10.0, methods=("auto", "lipsdp-neuron")) -> None:
    rows = []
    for model in models():
        for method in methods:
            rows.append(run(model, method, limit))
            print(rows[-1], flush=True)
    path = ROOT / "results" / "time-limits"
    with open(path.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    over = [r for r in rows if isinstance(r["exit"], str) or r["wall_s"] > 1.1 * limit + 5]
    lines = [f"# Time limits: `lipverify bound MODEL -m METHOD --time-limit {limit:g}`", "",
             machine(), "",
             "wall_s is the whole command (Python start, import, load, method, lower bound); "
             "time_s the method alone. Budget: 1.1 x limit + 5 s of start-up.", "",
             "| model | method | exit | wall s | method s | bound |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['exit']} | {r['wall_s']} | {r['time_s']} | "
              f"{r['bound']} |" for r in rows]
    lines += ["", f"Over budget: {len(over)} of {len(rows)}"
              + "".join(f"\n- {r['model']} {r['method']}: {r['wall_s']} s" for r in over)]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0,
         tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("auto", "lipsdp-neuron"))
