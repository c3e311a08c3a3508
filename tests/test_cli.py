"""The command line: outputs, JSON fields, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE_MODELS, shared_path
from lipverify_cli.main import main

SAMPLE = str(SAMPLE_MODELS / "digits_mlp_relu.onnx")
REQUIRED = {
    "model",
    "method",
    "norm",
    "bound",
    "certified",
    "solver",
    "status",
    "time_s",
    "lower_bound",
    "layers",
}


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_bound_json_has_required_fields():
    res = run("bound", SAMPLE, "--method", "naive", "--format", "json")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert REQUIRED <= set(obj)
    assert obj["certified"] is True and obj["method"] == "naive"
    assert isinstance(obj["bound"], float) and isinstance(obj["time_s"], float)
    assert obj["layers"] == [64, 64, 32, 10]
    assert obj["lower_bound"] <= obj["bound"]


def test_bound_default_says_which_method():
    res = run("bound", SAMPLE, "--no-lower")
    assert res.exit_code == 0, res.output
    assert "certified" in res.stdout
    assert "method auto ->" in res.stderr


def test_bound_linf_and_rows():
    res = run(
        "bound",
        SAMPLE,
        "--method",
        "naive",
        "--norm",
        "linf",
        "--output-rows",
        "0,3",
        "--format",
        "json",
        "--no-lower",
    )
    obj = json.loads(res.stdout)
    assert res.exit_code == 0 and obj["norm"] == "linf" and obj["output_rows"] == [0, 3]


def test_power_is_labelled_estimate():
    obj = json.loads(run("bound", SAMPLE, "-m", "power", "--format", "json", "--no-lower").stdout)
    assert obj["certified"] is False and obj["kind"] == "estimate"


@pytest.mark.parametrize(
    "args, code, text",
    [
        (("bound", "no-such-file.onnx"), 3, "no such file"),
        (("bound", "."), 3, "directory"),
        (("bound", SAMPLE, "--method", "nope"), 2, "unknown method"),
        (("bound", SAMPLE, "--output-rows", "99", "--no-lower"), 2, "out of range"),
        (("bound", SAMPLE, "--norm", "l7"), 2, "l7"),
    ],
)
def test_errors_have_exit_codes_and_no_traceback(args, code, text):
    res = run(*args)
    assert res.exit_code == code, res.output
    assert text in res.output
    assert "Traceback" not in res.output


def test_corrupt_and_truncated_onnx(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(Path(SAMPLE).read_bytes()[:500])
    for f in (bad, trunc):
        res = run("bound", str(f))
        assert res.exit_code == 3, res.output
        assert "Traceback" not in res.output


def test_unsupported_model_lists_nodes_exit_4():
    path = shared_path("onnx", "negative", "unet_simp_small.onnx")
    res = run("bound", str(path))
    assert res.exit_code == 4
    assert "ArgMax" in res.output and "OneHot" in res.output


def test_nan_weights_exit_3(tmp_path: Path):
    f = tmp_path / "nan.npz"
    np.savez(f, w1=np.array([[np.nan, 1.0], [0.0, 1.0], [1.0, 1.0]]), w2=np.ones((1, 3)))
    res = run("bound", str(f))
    assert res.exit_code == 3 and "NaN" in res.output


def test_debug_shows_traceback():
    res = run("--debug", "bound", "no-such-file.onnx")
    assert res.exit_code == 3


def test_compare_table_and_csv(tmp_path: Path):
    out = tmp_path / "out.csv"
    res = run(
        "compare",
        SAMPLE,
        str(SAMPLE_MODELS / "digits_mlp_tanh.onnx"),
        "--methods",
        "naive,gershgorin,lower",
        "--csv",
        str(out),
    )
    assert res.exit_code == 0, res.output
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 2 * 3
    assert "digits_mlp_relu" in res.stdout and "naive" in res.stdout


def test_compare_rejects_unknown_method_before_work():
    res = run("compare", SAMPLE, "--methods", "naive,bogus")
    assert res.exit_code == 2 and "bogus" in res.output


def test_info_methods_ops_doctor():
    res = run("info", SAMPLE, "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["widths"] == [64, 64, 32, 10]
    assert "naive" in run("methods").stdout
    ops = run("ops").stdout
    assert "Gemm" in ops and "Conv" in ops and "Sign" in ops
    doc = run("doctor")
    assert doc.exit_code == 0 and "MOSEK" in doc.stdout


def test_certificate_roundtrip_and_tamper(tmp_path: Path):
    model = str(shared_path("weights", "exlipbab_iris_4x6x6x3_relu.npz"))
    cert = tmp_path / "cert.json"
    res = run("bound", model, "-m", "lipsdp-neuron", "--save-certificate", str(cert),
              "--format", "json", "--no-lower")
    assert res.exit_code == 0, res.output
    bound = json.loads(res.stdout)["bound"]
    ok = run("check", model, str(cert))
    assert ok.exit_code == 0 and "valid" in ok.stdout
    data = json.loads(cert.read_text())
    # a smaller rho than proven: rejected
    data["certificate"]["rho"] = (bound * (1 - 1e-4)) ** 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert run("check", model, str(bad)).exit_code == 7
    # a negative multiplier: outside the multiplier set, rejected
    data = json.loads(cert.read_text())
    data["certificate"]["params"][0] = -1.0
    bad.write_text(json.dumps(data))
    assert run("check", model, str(bad)).exit_code == 7
    # another model: rejected by sha256
    other = str(shared_path("weights", "lyr2n80test1.npz"))
    res = run("check", other, str(cert))
    assert res.exit_code == 7 and "different model" in res.stdout


def test_naive_has_no_certificate_file(tmp_path: Path):
    res = run("bound", SAMPLE, "-m", "naive", "--save-certificate", str(tmp_path / "c.json"),
              "--no-lower")
    assert res.exit_code == 2 and "no certificate file" in res.output


def test_unknown_or_unusable_solver_is_refused_before_any_work():
    """Never a silent fallback: an unknown solver is a usage error listing the valid ones
    (exit 2); MOSEK without a licence or package is a solver error saying so (exit 5)."""
    res = run("bound", SAMPLE, "--solver", "cplex", "--no-lower")
    assert res.exit_code == 2 and "unknown solver 'cplex'" in res.output
    assert "clarabel" in res.output and "Traceback" not in res.output
    from lipverify.runtime.doctor import mosek_status

    if not mosek_status().ok:
        res = run("bound", SAMPLE, "--solver", "mosek", "--no-lower")
        assert res.exit_code == 5 and "solver mosek is not usable here" in res.output


def test_solvers_and_qcs_list_their_registries():
    from lipverify.ir.activations import ELEMENTWISE
    from lipverify.qc import QC_REGISTRY
    from lipverify.solvers.choose import BACKENDS

    res = run("solvers")
    assert res.exit_code == 0 and all(name in res.output for name in BACKENDS)
    res = run("qcs")
    assert res.exit_code == 0
    assert all(kind in res.output for kind in QC_REGISTRY)
    assert all(name in res.output for name in ELEMENTWISE)
    assert "[-0.128904, 1.1289]" in res.output and "slope interval" in res.output
    assert "slopes in [alpha, beta]" in res.output  # not eaten as rich markup
