"""The optimum of LipSDP-Channel on a conv chain, by the interior point, against the default
``lipverify bound`` (issue 16: "cifar_base_kw at LipSDP-channel level").

The primal-dual interior point (:func:`lipverify.solvers.interior.solve_chain_ipm`, no time
pressure) solves the channel LMI to a relative gap of 1e-7 in rho; its dual point bounds the
optimum from below, its multipliers are certified by the §8 gate. The rank-4 trajectory
ascent (:mod:`lipverify.solvers.trajectory`, the gap stage's dual) is run beside it. The
certified bound of the default run comes from results/bench-structured.csv. Writes
results/channel-optimum.{csv,md}.

    python results/channel_optimum.py [MODEL.onnx ...]
"""

from __future__ import annotations

import csv
import math
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "results"))
from make_compare import SHARED, machine, write_csv  # noqa: E402

import lipverify  # noqa: E402
from lipverify.certify.gate import certify  # noqa: E402
from lipverify.lmi.chain import ChainLMI  # noqa: E402
from lipverify.solvers.interior import solve_chain_ipm  # noqa: E402
from lipverify.solvers.sequential import ldlt_fast_params  # noqa: E402
from lipverify.solvers.trajectory import ascent_bound  # noqa: E402

MODELS = ("cifar_base_kw.onnx",)
FIELDS = ("model", "order", "multipliers", "ipm_status", "iterations", "ipm_seconds",
          "optimum_L", "dual_L", "optimum_certified", "trajectory_L", "auto_certified",
          "auto_above_optimum", "peak_mib")


def main(models=MODELS) -> None:
    bench = {r["model"]: r for r in csv.DictReader(open(ROOT / "results" /
                                                        "bench-structured.csv"))}
    rows = []
    for name in models:
        net = lipverify.load(SHARED / "onnx" / name)
        lmi = ChainLMI.from_network(net, per_neuron="channel")
        t0 = time.perf_counter()
        res = solve_chain_ipm(lmi, ldlt_fast_params(lmi), algorithm="primal-dual", tol=1e-7)
        seconds = time.perf_counter() - t0
        cert = certify(lmi, res.params)
        traj = ascent_bound(net, "channel", rank=4)
        key = name.removesuffix(".onnx")
        auto = float(bench[key]["bound"])
        opt = math.sqrt(res.rho)
        rows.append({
            "model": key, "order": str(lmi.order), "multipliers": str(sum(lmi.param_sizes)),
            "ipm_status": res.status, "iterations": str(res.iterations),
            "ipm_seconds": f"{seconds:.0f}", "optimum_L": f"{opt:.8g}",
            "dual_L": f"{math.sqrt(max(res.lower or 0.0, 0.0)):.8g}",
            "optimum_certified": f"{cert.bound:.8g}" if cert.ok else "not certified",
            "trajectory_L": f"{math.sqrt(traj):.8g}" if traj else "none",
            "auto_certified": f"{auto:.8g}", "auto_above_optimum": f"{(auto - opt) / opt:.2%}",
            "peak_mib": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"})
        print(rows[-1], flush=True)
    write_csv(ROOT / "results" / "channel-optimum.csv", FIELDS, rows)
    lines = ["# LipSDP-Channel's optimum on the conv chains, against the default bound", "",
             machine(), "", "Command: `python results/channel_optimum.py` (one process; the "
             "interior point alone, nothing else running). `optimum L` is the interior "
             "point's last iterate, `dual L` its dual bound: the channel optimum lies between "
             "them. `optimum certified` is that iterate through the §8 gate. `trajectory L` "
             "is the rank-4 trajectory ascent of the gap stage (a dual bound needing no "
             "solve). `auto` is the default `lipverify bound MODEL` (300 s) of "
             "results/bench-structured.csv.", "",
             "| model | order | multipliers | interior point | iterations | s | optimum L | "
             "dual L | optimum certified | trajectory L | auto certified | auto above "
             "optimum | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r[f] for f in FIELDS) + " |" for r in rows]
    (ROOT / "results" / "channel-optimum.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or MODELS)
