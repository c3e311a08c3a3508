"""Naive and Gershgorin on every model, structured: no dense order-N matrix (issue 19 item 4).

Each model runs ``lipverify.bound(net, method=M)`` for M in naive, gershgorin in a fresh
process, recording the method's time, the whole process's peak resident memory (ru_maxrss)
and the bound. The models: ../shared/models, models/, and the three 28x28x32 CNNs of
GLipSDP's export that tests/test_structured_naive.py rebuilds (a per-channel scale on
32x28x28 = 25088 values, whose dense matrix would need 4.7 GiB). Writes
results/naive-structured.{csv,md} headed by the machine description.

    python results/naive_structured.py
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import machine  # noqa: E402
from time_limits import models  # noqa: E402

CHILD = """
import json, resource, sys, time
import lipverify
net = lipverify.load(sys.argv[1])
t0 = time.perf_counter()
res = lipverify.bound(net, method=sys.argv[2])
print(json.dumps({"time_s": time.perf_counter() - t0, "bound": res.bound,
                  "certified": res.certified, "input_dim": net.input_dim,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cnn_models(folder: Path) -> list[Path]:
    source = ROOT / "tests" / "test_structured_naive.py"
    spec = importlib.util.spec_from_file_location("tsn", source)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = []
    for variant in ("bn", "bn-after-relu", "pool"):
        out.append(folder / f"glipsdp_cnn28x28x32_{variant}.onnx")
        mod._cnn_onnx(out[-1], variant)
    return out


def run(model: Path, method: str) -> dict:
    row = {"model": model.name, "method": method, "exit": "", "time_s": "", "peak_mib": "",
           "bound": "", "certified": ""}
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(model), method],
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {**row, "exit": "killed"}
    row["exit"] = proc.returncode
    if proc.returncode == 0:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(time_s=round(res["time_s"], 3), peak_mib=round(res["peak_mib"]),
                   bound=res["bound"], certified=res["certified"])
    else:
        row["bound"] = (proc.stderr.strip().splitlines() or [""])[-1][:80]
    return row


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(m, meth) for m in models() + cnn_models(Path(tmp))
                for meth in ("naive", "gershgorin")]
    for r in rows:
        print(r, flush=True)
    path = ROOT / "results" / "naive-structured"
    with open(path.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Naive and Gershgorin, structured (`lipverify.bound(net, method=M)`)",
             "", machine(), "",
             "time_s is the method alone; peak MiB the whole process (Python, torch, onnx "
             "imports included).", "",
             "| model | method | exit | method s | peak MiB | bound | certified |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['exit']} | {r['time_s']} | {r['peak_mib']} "
              f"| {r['bound']} | {r['certified']} |" for r in rows]
    failed = [r for r in rows if r["exit"] != 0 and "robust_benchmark" not in r["model"]]
    slowest = max((r for r in rows if r["time_s"] != ""), key=lambda r: r["time_s"])
    lines += ["", f"Failed: {len(failed)} of {len(rows)} (the state-dict-only .pth needs its "
              "architecture from Python and is refused by design). Slowest: "
              f"{slowest['model']} {slowest['method']} {slowest['time_s']} s; largest peak "
              f"{max(r['peak_mib'] for r in rows if r['peak_mib'] != '')} MiB."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
