"""Scale benchmark (``make bench``): lipverify's solver against the monolithic cvxpy LMI with
each installed open solver, the eclipse-nn package (ECLipsE, ECLipsE-Fast; optional) and the
naive product, side by side on the same networks.

Every (case, runner) pair runs in its own child process with a wall-time cap and an address
space cap (RLIMIT_AS), so a solver that would hang or exhaust memory is recorded as such
instead of taking the machine down. The child reports bound, certified flag, optimality gap,
wall time and peak resident memory (ru_maxrss). Writes results/bench-<suite>.{csv,md} headed
by the machine description. Usage::

    python results/bench.py [quick|full]   # quick: the cases in the default suite below
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import SHARED, machine  # noqa: E402

OURS_LIMIT = float(os.environ.get("LIPVERIFY_BENCH_TIME_LIMIT", "60"))
CAP_SECONDS = float(os.environ.get("LIPVERIFY_BENCH_CAP", "120"))
CAP_BYTES = int(float(os.environ.get("LIPVERIFY_BENCH_MEM_GB", "8")) * 2**30)
RUNNERS = ("lipverify", "cvxpy-clarabel", "cvxpy-scs", "eclipse", "eclipse-fast", "naive")
#: Re-run only these runners (comma list); rows of the others are taken from REUSE, the CSV
#: of an earlier run, when it has them (the peers' results do not depend on our code).
ONLY = [r for r in os.environ.get("LIPVERIFY_BENCH_RUNNERS", "").split(",") if r]
REUSE = os.environ.get("LIPVERIFY_BENCH_REUSE")
#: Run only the cases whose name contains this text (the others come from REUSE).
CASES = os.environ.get("LIPVERIFY_BENCH_CASES", "")


def cases(suite: str) -> list[dict]:
    out = [{"name": "mlp 64-64x4-10", "widths": [64, 64, 64, 64, 64, 10], "seed": 0}]
    out += [{"name": f"depth sweep 64x{d}", "widths": [64] * (d + 1) + [10], "seed": d,
             **({"limit": 300.0} if d == 32 else {})} for d in (2, 8, 16, 32, 64)]
    out += [{"name": f"784-{n}-{n}-10", "widths": [784, n, n, 10], "seed": n}
            for n in (100, 200, 300, 400)]
    out += [{"name": f"width {w} x2", "widths": [w, w, w, 10], "seed": w} for w in (32, 128, 512)]
    for f in ("mnist-net_256x2.onnx", "mnist-net_256x6.onnx", "mnist_relu_9_200.onnx"):
        if (SHARED / "onnx" / f).exists():
            out.append({"name": f, "path": str(SHARED / "onnx" / f),
                        **({} if f == "mnist-net_256x2.onnx" else {"limit": 300.0})})
    if suite == "full":
        out.append({"name": "784-1024x8-10", "widths": [784] + [1024] * 8 + [10], "seed": 8,
                    "runners": ("lipverify", "naive"), "limit": 600.0})
        out.append({"name": "784-2048x8-10", "widths": [784] + [2048] * 8 + [10], "seed": 2048,
                    "runners": ("lipverify", "naive"), "limit": 1800.0})
        out.append({"name": "depth sweep 64x64 (ours)", "widths": [64] * 65 + [10], "seed": 64,
                    "runners": ("lipverify",)})
        out.append({"name": "depth sweep 64x64 exact (--solver ipm)", "widths": [64] * 65 + [10],
                    "seed": 64, "runners": ("lipverify",), "solver": "ipm", "limit": 1800.0})
    return out


# ----------------------------------------------------------------------------- child side
def _network(case):
    import numpy as np

    import lipverify
    from lipverify.ir.activations import SlopeRestricted

    if "path" in case:
        return lipverify.load(case["path"])
    rng = np.random.default_rng(case["seed"])
    w = case["widths"]
    ws = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(w, w[1:])]
    return lipverify.Network.sequential(ws, [SlopeRestricted.named("relu")] * (len(ws) - 1))


def _child(case, runner) -> dict:
    import math

    import numpy as np

    import lipverify
    from lipverify.certify.gate import certify_chain
    from lipverify.lmi.chain import ChainLMI
    from lipverify.solvers.choose import get_backend
    from lipverify.solvers.conic import solve_chain

    net = _network(case)
    import cvxpy  # noqa: F401  (imports are not part of any runner's time)
    import threadpoolctl  # noqa: F401
    import torch  # noqa: F401

    import lipverify.solvers.gap  # noqa: F401  (lipverify's solvers import lazily)
    import lipverify.solvers.interior.chordal  # noqa: F401

    lipverify.methods.list_methods()
    start = time.perf_counter()
    res = {"bound": None, "certified": False, "gap": None, "status": "ok"}
    if runner == "lipverify":
        r = lipverify.bound(net, method="lipsdp-neuron", solver=case.get("solver", "auto"),
                            time_limit=case.get("limit", OURS_LIMIT))
        res.update(bound=r.bound, certified=r.certified, gap=r.details.get("gap"),
                   status=str(r.status), solver=r.solver, device=r.details.get("device", "cpu"))
    elif runner == "naive":
        r = lipverify.bound(net, method="naive")
        res.update(bound=r.bound, certified=r.certified)
    elif runner.startswith("cvxpy-"):
        lmi = ChainLMI.from_network(net)
        out = solve_chain(lmi, get_backend(runner.split("-", 1)[1]), CAP_SECONDS, form="full")
        if out.params is None:
            res.update(status=f"solver {out.status}")
        else:
            cert = certify_chain(lmi, out.params)
            res.update(bound=cert.bound, certified=cert.ok, status=f"solver {out.status}; "
                       f"solver value {out.value:.8g}")
    else:
        import torch
        from eclipse_nn import LipConstEstimator

        layers = net.chain()
        weights = [torch.tensor(lay.weight.to_dense(), dtype=torch.float64) for lay in layers]
        est = LipConstEstimator(weights=weights)
        value = est.estimate("ECLipsE" if runner == "eclipse" else "ECLipsE_Fast")
        res.update(bound=float(value), status="peer value (not certified by lipverify)")
    res["seconds"] = time.perf_counter() - start
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["order"] = net.input_dim + sum(n.width for n in net.nodes)
    if res["bound"] is not None and not math.isfinite(res["bound"]):
        res["bound"] = None
    del np
    return res


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def run_one(case, runner) -> dict:
    if runner.startswith("eclipse"):
        import importlib.util

        if importlib.util.find_spec("eclipse_nn") is None:
            return {"status": "eclipse-nn not installed (pip install eclipse-nn)"}
    cap = CAP_SECONDS * 1.5 + case.get("limit", OURS_LIMIT) * 2
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(case), runner],
            capture_output=True, text=True, timeout=cap, preexec_fn=_limit_memory, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"killed at the {cap:.0f} s cap"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if "MemoryError" in proc.stderr or proc.returncode in (-9, 137):
            err = f"memory cap {CAP_BYTES / 2**30:.0f} GiB: {err}"
        return {"status": f"failed: {err[:160]}"}
    return json.loads(lines[-1])


def _previous() -> dict:
    if not REUSE or not Path(REUSE).exists():
        return {}
    with open(REUSE) as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    out = {}
    for row in csv.DictReader(lines):
        parsed = {}
        for k, v in row.items():
            if v in ("", None):
                continue
            try:
                parsed[k] = float(v) if k not in ("case", "runner", "status", "certified",
                                                  "solver", "device") else v
            except ValueError:
                parsed[k] = v
        parsed["certified"] = row.get("certified") == "True"
        status = row.get("status", "")
        parsed["status"] = status if status.endswith("[earlier run]") else \
            f"{status} [earlier run]"
        out[(row["case"], row["runner"])] = parsed
    return out


def main(suite: str) -> None:
    rows = []
    previous = _previous()
    for case in cases(suite):
        ref = {}
        for runner in case.get("runners", RUNNERS):
            old = previous.get((case["name"], runner))
            if (ONLY and runner not in ONLY) or CASES not in case["name"]:
                if old is None:
                    continue
                r = {k: v for k, v in old.items() if k not in ("case", "runner")}
                r.pop("time_ratio_vs_ours", None)
                r.pop("bound_ratio_vs_ours", None)
            else:
                r = run_one(case, runner)
            ref[runner] = r
            rows.append({"case": case["name"], "runner": runner, **r})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        ours = ref.get("lipverify", {})
        for row in rows:
            if row["case"] != case["name"] or row["runner"] == "lipverify":
                continue
            if ours.get("seconds") and row.get("seconds"):
                row["time_ratio_vs_ours"] = row["seconds"] / ours["seconds"]
            if ours.get("bound") and row.get("bound"):
                row["bound_ratio_vs_ours"] = row["bound"] / ours["bound"]
    write(rows, f"bench-{suite}")


FIELDS = ("case", "runner", "order", "bound", "certified", "gap", "seconds", "peak_mb",
          "time_ratio_vs_ours", "bound_ratio_vs_ours", "solver", "device", "status")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _summary(rows) -> list[str]:
    """One line per case: ours, the best certified monolithic solve, ECLipsE, naive."""
    def cell(r):
        if not r or r.get("bound") is None:
            return (r or {}).get("status", "not run")[:40].replace("|", "/")
        gap = f", gap {r['gap']:.1e}" if r.get("gap") is not None else ""
        return f"{r['bound']:.6g} in {r.get('seconds', float('nan')):.3g} s{gap}"

    out = ["Summary (certified bounds unless noted; all details in the table below):", "",
           "| case | lipverify | monolithic cvxpy (best certified) | ECLipsE (not certified) "
           "| naive |", "|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {r["runner"]: r for r in rows if r["case"] == case}
        mono = [by[k] for k in ("cvxpy-clarabel", "cvxpy-scs")
                if k in by and by[k].get("bound") is not None and by[k].get("certified")]
        best = min(mono, key=lambda r: r["bound"]) if mono else \
            by.get("cvxpy-scs") or by.get("cvxpy-clarabel")
        out.append(f"| {case} | {cell(by.get('lipverify'))} | {cell(best)} | "
                   f"{cell(by.get('eclipse'))} | {cell(by.get('naive'))} |")
    return [*out, ""]


def write(rows, name: str) -> None:
    desc = machine()
    out = ROOT / "results"
    with open(out / f"{name}.csv", "w", newline="") as fh:
        fh.write(f"# {desc}\n")
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: _fmt(r.get(k)) for k in FIELDS} for r in rows)
    lines = [f"# {name}", "", f"Machine: {desc}", "",
             f"lipverify: lipsdp-neuron, `--solver auto`, time limit {OURS_LIMIT:g} s (unless "
             f"the case says otherwise). cvxpy-*: the monolithic LMI (form=full), solver time "
             f"limit {CAP_SECONDS:g} s, each run capped at {CAP_BYTES / 2**30:.0f} GiB of "
             "address space. eclipse/eclipse-fast: the eclipse-nn package's own values (not "
             "certified). Ratios are this runner / lipverify. Times in seconds, peak resident "
             "memory in MB.", "",
             *([f"This run re-ran only: {', '.join(ONLY)}. Rows marked [earlier run] are "
                f"copied from {Path(REUSE).name if REUSE else '-'} (same cases, same caps; "
                "the peers do not depend on our code).", ""] if ONLY else []),
             *_summary(rows),
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(_fmt(r.get(k)).replace("|", "/") for k in FIELDS) + " |"
              for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]), sys.argv[3])))
    else:
        t0 = time.time()
        main(sys.argv[1] if len(sys.argv) > 1 else "quick")
        print(f"bench finished in {time.time() - t0:.0f} s", file=sys.stderr)
