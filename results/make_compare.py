"""Regenerate the comparison tables in results/ (``make compare``).

* ``baselines.{csv,md}``: naive, gershgorin and lower on every importable shared and
  sample model (issue: foundation).
* ``lipsdp.{csv,md}``: every SDP-family method on the feed-forward slope-activation
  networks (ReLU, sigmoid, tanh, LeakyReLU).

Each file starts with the machine description. Shared models are read in place from
../shared/models; missing ones are skipped.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import lipverify

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPVERIFY_SHARED_MODELS", ROOT.parent / "shared" / "models"))
OUT = ROOT / "results"
BASELINES = ("naive", "gershgorin", "lower")
SDP_METHODS = ("naive", "gershgorin", "ldlt-fast", "ldlt", "lipsdp-layer", "lipsdp-neuron", "lower")
TIME_LIMIT = float(os.environ.get("LIPVERIFY_BENCH_TIME_LIMIT", "60"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import cvxpy
    import numpy
    import scipy

    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, scipy {scipy.__version__}, cvxpy {cvxpy.__version__}, "
        f"lipverify {lipverify.__version__}; {time.strftime('%Y-%m-%d')}"
    )


def write_csv(path, fields, rows) -> None:
    """``rows`` (dicts) as CSV with columns ``fields`` (missing keys left empty)."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def models() -> list[tuple[str, dict]]:
    found = [(str(p), {}) for p in sorted((SHARED / "onnx").glob("*.onnx"))]
    found += [(str(p), {}) for p in sorted((SHARED / "weights").glob("*.npz"))]
    found += [(str(SHARED / "weights" / "random_weights.mat"), {})]
    found += [(str(SHARED / "weights" / "ACASXU_run2a_1_1_batch_2000.nnet"), {})]
    found += [
        (str(p), {"output_rows": [7]})
        for p in sorted((SHARED / "weights" / "glipsdp_digits").glob("*.mat"))
    ]
    found += [(str(p), {}) for p in sorted((ROOT / "models").glob("*.onnx"))]
    return [(p, o) for p, o in found if Path(p).exists()]


def _row(path, opts, r: lipverify.BoundResult | None, method, error=""):
    return {
        "model": Path(path).name,
        "rows": ",".join(map(str, opts.get("output_rows", []))),
        "method": method,
        "bound": "" if r is None else f"{r.bound:.10g}",
        "certified": "" if r is None else r.certified,
        "kind": "" if r is None else r.kind,
        "solver": "" if r is None else (r.solver or ""),
        "status": error or r.status,
        "time_s": "" if r is None else f"{r.time_s:.3f}",
        "layers": "" if r is None else "-".join(map(str, r.layers)),
    }


def run(methods, select, name: str) -> None:
    rows = []
    for path, opts in models():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = lipverify.load(path)
        except lipverify.LipverifyError as exc:
            rows.append(_row(path, opts, None, "-", f"refused: {str(exc).splitlines()[0]}"))
            continue
        if not select(net):
            continue
        for method in methods:
            try:
                r = lipverify.bound(net, method=method, time_limit=TIME_LIMIT, **opts)
                rows.append(_row(path, opts, r, method))
            except lipverify.LipverifyError as exc:
                rows.append(_row(path, opts, None, method, str(exc).splitlines()[0]))
            print(name, rows[-1], file=sys.stderr, flush=True)
    write(rows, name)


def write(rows, name: str) -> None:
    fields = [
        "model",
        "rows",
        "method",
        "bound",
        "certified",
        "kind",
        "solver",
        "status",
        "time_s",
        "layers",
    ]
    desc = machine()
    with open(OUT / f"{name}.csv", "w", newline="") as fh:
        fh.write(f"# {desc}\n")
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# {name}",
        "",
        f"Machine: {desc}",
        "",
        f"Solver time limit per bound: {TIME_LIMIT:g} s. `certified` is the §8 check; "
        "`lower` is a witnessed lower bound; times in seconds.",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    lines += ["| " + " | ".join(str(r[f]) for f in fields) + " |" for r in rows]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


def _slope_chain(net) -> bool:
    return (
        net.is_sequential
        and all(a.kind == "slope" for a in net.activations)
        and all(type(t.op).__name__ != "Conv2d" for n in net.nodes for t in n.pre.terms)
    )


ARCH_MODELS = ("rb_MLP_MNIST_1_LIP_GNP_groupsort.onnx", "cifar_base_kw.onnx",
               "NN_rul_small_window_20.onnx", "resnet_2b.onnx",
               "resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx", "Convnet_avgpool.onnx",
               "digits_cnn.onnx", "digits_maxmin.onnx")


def _arch_methods(net) -> tuple[str, ...]:
    """The certified methods worth running on each architecture (issue: architectures)."""
    order = net.input_dim + sum(n.width for n in net.nodes)
    conv = any(type(t.op).__name__ == "Conv2d" for n in net.nodes for t in n.pre.terms)
    methods = ["naive", "lower"]
    if net.is_sequential:
        methods += ["ldlt-fast", "lipsdp-neuron"] + (["lipsdp-channel"] if conv else [])
    elif order <= 2000:
        methods += ["lipsdp-neuron"]
    return (*methods, "lipsdp-split") if len(net.nodes) > 1 else tuple(methods)


def run_architectures() -> None:
    """Resumable: finished rows are kept in results/architectures.partial.jsonl until the
    table is written (a bound here can take minutes)."""
    import json

    partial = OUT / "architectures.partial.jsonl"
    done = [json.loads(line) for line in partial.read_text().splitlines()] \
        if partial.exists() else []
    rows = []
    for path, opts in models():
        if Path(path).name not in ARCH_MODELS:
            continue
        net = lipverify.load(path)
        for method in _arch_methods(net):
            old = [r for r in done if r["model"] == Path(path).name and r["method"] == method]
            if old:
                rows.append(old[0])
                continue
            try:
                r = lipverify.bound(net, method=method, time_limit=TIME_LIMIT, **opts)
                rows.append(_row(path, opts, r, method))
            except lipverify.LipverifyError as exc:
                rows.append(_row(path, opts, None, method, str(exc).splitlines()[0]))
            with open(partial, "a") as fh:
                fh.write(json.dumps(rows[-1], default=str) + "\n")
            print("architectures", rows[-1], file=sys.stderr, flush=True)
    write(rows, "architectures")
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    which = sys.argv[1:] or ["baselines", "lipsdp", "architectures"]
    if "architectures" in which:
        run_architectures()
    if "baselines" in which:
        run(BASELINES, lambda net: True, "baselines")
    if "lipsdp" in which:
        run(SDP_METHODS, _slope_chain, "lipsdp")
