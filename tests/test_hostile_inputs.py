"""Hostile input: malformed model files, out-of-range parameters, bad option values, bad
argument types, unwritable outputs. Every one must end as a domain error (its exit code, one
"error:" line naming the file and the field), never a traceback and never a wrong number; and
nothing may be left behind in the working folder.

The malformed ONNX models are built here with ``onnx.helper``; the option tests use the real
sample model ``models/digits_mlp_relu.onnx``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE_MODELS
from lipverify_cli.main import main

import lipverify
from lipverify.errors import (
    LipverifyError,
    ModelLoadError,
    NotApplicableError,
    NumericalError,
    UsageError,
)
from lipverify.ir.activations import SlopeRestricted

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SAMPLE = str(SAMPLE_MODELS / "digits_mlp_relu.onnx")
SAMPLE_NPZ = str(SAMPLE_MODELS / "digits_mlp_relu.npz")


# ----------------------------------------------------------------------------- helpers
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lower().startswith("error:")]


def assert_clean_failure(res, code: int, *texts: str) -> None:
    """Exit ``code``, exactly one error line holding every text, no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), \
        repr(res.exception)
    lines = error_lines(res.output)
    assert len(lines) == 1, res.output
    for text in texts:
        assert text in lines[0], res.output


def tensor(name: str, arr, raw: bytes | None = None, dims=None, typed: str | None = None):
    """A TensorProto of ``arr``, then tampered with: other raw bytes, other dims, or the data
    moved to the typed field ``typed`` (e.g. float_data)."""
    t = numpy_helper.from_array(np.asarray(arr), name)
    if typed is not None:
        values = np.asarray(arr).ravel().tolist()
        t.ClearField("raw_data")
        getattr(t, typed).extend(values)
    if raw is not None:
        t.raw_data = raw
    if dims is not None:
        del t.dims[:]
        t.dims.extend(dims)
    return t


def mlp(w1=None, w2=None, *, act="Relu", act_attrs=None, in_dims=(1, 3), init1=None,
        extra_inits=(), extra_nodes=(), elem=TensorProto.FLOAT, gemm_attrs=None, b1=None):
    """x (1x3) -> Gemm(w1: 4x3) -> act -> Gemm(w2: 2x4) -> y, with the pieces replaceable."""
    dtype = np.float64 if elem == TensorProto.DOUBLE else np.float32
    w1 = np.ones((4, 3), dtype) if w1 is None else w1
    w2 = np.ones((2, 4), dtype) if w2 is None else w2
    inits = [init1 if init1 is not None else numpy_helper.from_array(np.asarray(w1), "w1"),
             numpy_helper.from_array(np.asarray(w2), "w2"), *extra_inits]
    if b1 is not None:
        inits.append(numpy_helper.from_array(np.asarray(b1), "b1"))
    nodes = [
        *extra_nodes,
        helper.make_node("Gemm", ["x", "w1"] + (["b1"] if b1 is not None else []), ["h"],
                         transB=1, **(gemm_attrs or {})),
        helper.make_node(act, ["h"], ["a"], name="act", **(act_attrs or {})),
        helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", elem,
                                                                               list(in_dims))],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def clip_model(lo, hi, as_constant=False):
    """x -> Gemm -> Clip(min, max) -> Gemm: Clip bounds as initializers or Constant nodes."""
    lo_t = numpy_helper.from_array(np.array(lo, np.float32), "lo")
    hi_t = numpy_helper.from_array(np.array(hi, np.float32), "hi")
    if as_constant:
        extra_nodes = (helper.make_node("Constant", [], ["lo"], name="c_lo", value=lo_t),
                       helper.make_node("Constant", [], ["hi"], name="c_hi", value=hi_t))
        extra_inits = ()
    else:
        extra_nodes, extra_inits = (), (lo_t, hi_t)
    model = mlp(extra_inits=extra_inits, extra_nodes=extra_nodes)
    model.graph.node[-2].CopyFrom(helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="clip"))
    return model


def save(model, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


F32 = np.float32
NAN, INF = float("nan"), float("inf")


def _no_data():
    t = numpy_helper.from_array(np.ones((4, 3), F32), "w1")
    t.ClearField("raw_data")
    return t


def _undefined_type():
    t = numpy_helper.from_array(np.ones((4, 3), F32), "w1")
    t.data_type = TensorProto.UNDEFINED
    return t


def _external():
    t = numpy_helper.from_array(np.ones((4, 3), F32), "w1")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "missing-weights.bin"
    return t


def _float32(arr):
    """``arr`` rounded to float32, as an exporter would (1e39 becomes inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(arr).astype(F32)


def _constant_w1(arr=None, raw=None):
    value = tensor("cw", np.ones((4, 3), F32) if arr is None else arr, raw=raw)
    model = mlp(extra_nodes=(helper.make_node("Constant", [], ["w1c"], name="const_w1",
                                              value=value),))
    model.graph.node[1].input[1] = "w1c"
    return model


# (id, model builder, exit code, texts the error line must hold)
BAD_ONNX = [
    ("raw-short", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), raw=b"\0" * 10)), 3,
     ["'w1'", "10 bytes", "48 bytes"]),
    ("raw-one-byte-short", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32),
                                                    raw=b"\0" * 47)), 3, ["'w1'", "47 bytes"]),
    ("raw-surplus", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), raw=b"\0" * 52)), 3,
     ["'w1'", "52 bytes"]),
    ("raw-empty", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), raw=b"")), 3,
     ["'w1'", "no data"]),
    ("no-data-at-all", lambda: mlp(init1=_no_data()), 3, ["'w1'", "no data"]),
    ("float-data-short", lambda: mlp(init1=tensor("w1", np.ones(5, F32), typed="float_data",
                                                  dims=[4, 3])), 3, ["'w1'", "float_data"]),
    ("double-data-short", lambda: mlp(init1=tensor("w1", np.ones(11), typed="double_data",
                                                   dims=[4, 3])), 3, ["'w1'", "double_data"]),
    ("huge-dims", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), dims=[2**20, 2**20])),
     3, ["'w1'", "1,099,511,627,776 elements"]),
    ("huge-dims-1d", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), dims=[2**31 + 1])),
     3, ["'w1'", "elements"]),
    ("huge-dims-overflowing", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32),
                                                       dims=[2**62, 2**62])), 3, ["'w1'"]),
    ("negative-dims", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), dims=[-4, -3])), 3,
     ["'w1'", "negative dimension"]),
    ("one-negative-dim", lambda: mlp(init1=tensor("w1", np.ones((4, 3), F32), dims=[-1, 12])),
     3, ["'w1'", "negative dimension"]),
    ("undefined-type", lambda: mlp(init1=_undefined_type()), 3, ["'w1'", "data type"]),
    ("external-data-missing", lambda: mlp(init1=_external()), 3, ["m.onnx"]),
    ("constant-raw-short", lambda: _constant_w1(raw=b"\0" * 7), 3, ["'const_w1'", "7 bytes"]),
    ("constant-nan", lambda: _constant_w1(arr=np.full((4, 3), NAN, F32)), 3,
     ["'const_w1'", "NaN"]),
    ("input-negative-dim", lambda: mlp(in_dims=(1, -3)), 3, ["input 'x'", "-3"]),
    ("input-zero-dim", lambda: mlp(in_dims=(1, 0)), 3, ["input 'x'", "size 0"]),
    ("input-rank1-zero", lambda: mlp(in_dims=(0,)), 3, ["input 'x'", "size 0"]),
    ("input-huge", lambda: mlp(in_dims=(1, 2**32)), 3, ["input 'x'", "elements"]),
    ("nan-weight", lambda: mlp(w1=np.full((4, 3), NAN, F32)), 3, ["'w1'", "NaN"]),
    ("one-nan-weight", lambda: mlp(w2=np.where(np.eye(2, 4) > 0, NAN, 1).astype(F32)), 3,
     ["'w2'", "2 NaN"]),
    ("inf-weight", lambda: mlp(w1=np.full((4, 3), INF, F32)), 3, ["'w1'", "12 infinite"]),
    ("minus-inf-bias", lambda: mlp(b1=np.array([0, 0, -INF, 0], F32)), 3,
     ["'b1'", "1 infinite"]),
    ("nan-unused-initializer", lambda: mlp(extra_inits=(numpy_helper.from_array(
        np.array([NAN], F32), "junk"),)), 3, ["'junk'", "NaN"]),
    ("float32-overflow-1e39", lambda: mlp(w1=_float32(np.full((4, 3), 1e39))), 3,
     ["'w1'", "12 infinite"]),
    ("leaky-alpha-nan", lambda: mlp(act="LeakyRelu", act_attrs={"alpha": NAN}), 3,
     ["'act'", "LeakyRelu", "alpha"]),
    ("leaky-alpha-inf", lambda: mlp(act="LeakyRelu", act_attrs={"alpha": INF}), 3,
     ["'act'", "alpha", "finite"]),
    ("leaky-alpha-minus-inf", lambda: mlp(act="LeakyRelu", act_attrs={"alpha": -INF}), 3,
     ["'act'", "alpha"]),
    ("elu-alpha-nan", lambda: mlp(act="Elu", act_attrs={"alpha": NAN}), 3,
     ["'act'", "Elu", "alpha"]),
    ("elu-alpha-inf", lambda: mlp(act="Elu", act_attrs={"alpha": INF}), 3, ["'act'", "alpha"]),
    ("gemm-alpha-nan", lambda: mlp(gemm_attrs={"alpha": NAN}), 3, ["Gemm", "alpha", "NaN"]),
    ("clip-min-above-max", lambda: clip_model(2.0, -1.0), 3, ["'clip'", "min 2", "max -1"]),
    ("clip-min-nan", lambda: clip_model(NAN, 1.0), 3, ["'lo'", "NaN"]),
    ("clip-constant-nan", lambda: clip_model(0.0, NAN, as_constant=True), 3,
     ["'c_hi'", "NaN"]),
    ("clip-min-plus-inf", lambda: clip_model(INF, INF), 3, ["'clip'", "no finite value"]),
]


@pytest.mark.parametrize("build, code, texts", [c[1:] for c in BAD_ONNX],
                         ids=[c[0] for c in BAD_ONNX])
def test_malformed_onnx_cli(tmp_path, build, code, texts):
    path = save(build(), tmp_path)
    before = files(tmp_path)
    res = run("bound", path, "-m", "naive", "--no-lower")
    assert_clean_failure(res, code, *texts)
    assert "m.onnx" in error_lines(res.output)[0]
    assert files(tmp_path) == before


@pytest.mark.parametrize("build, code, texts", [c[1:] for c in BAD_ONNX],
                         ids=[c[0] for c in BAD_ONNX])
def test_malformed_onnx_api(tmp_path, build, code, texts):
    path = save(build(), tmp_path)
    with pytest.raises(LipverifyError) as info:
        lipverify.load(path)
    assert info.value.exit_code == code
    assert isinstance(info.value, ModelLoadError)
    assert "\n" not in str(info.value)
    for text in texts:
        assert text in str(info.value)


def test_the_size_check_comes_before_any_allocation(tmp_path, monkeypatch):
    """numpy_helper.to_array is never reached for a tensor that declares petabytes."""
    calls = []
    real = numpy_helper.to_array
    monkeypatch.setattr(numpy_helper, "to_array", lambda t, *a: calls.append(t.name) or real(t))
    path = save(mlp(init1=tensor("w1", np.ones((4, 3), F32), dims=[2**25, 2**25])), tmp_path)
    with pytest.raises(ModelLoadError, match="'w1'"):
        lipverify.load(path)
    assert "w1" not in calls


@pytest.mark.parametrize("lo, hi", [(0.0, INF), (-INF, 1.0), (-INF, INF)])
@pytest.mark.parametrize("as_constant", [False, True])
def test_infinite_clip_bounds_are_fine(tmp_path, lo, hi, as_constant):
    """An open clipping bound is the one place an infinite constant means something."""
    path = save(clip_model(lo, hi, as_constant), tmp_path)
    r = lipverify.bound(path, method="naive")
    assert r.certified and math.isfinite(r.bound)


def test_input_dims_unknown_or_zero_batch_are_one(tmp_path):
    for dims in [("batch", 3), (0, 3)]:
        net = lipverify.load(save(mlp(in_dims=dims), tmp_path))
        assert net.input_dim == 3


# ---------------------------------------------------------------- extreme magnitudes
def test_float32_1e36_weights_give_the_exact_certified_bound(tmp_path):
    """||W2 W1|| = 1e72 * 4 sqrt(6) (all-ones layers, inputs with a positive sum pass the
    ReLU): float32 weights of 1e36 are representable and the product is far from overflow."""
    path = save(mlp(w1=np.full((4, 3), 1e36, F32), w2=np.full((2, 4), 1e36, F32)), tmp_path)
    exact = float(F32(1e36)) ** 2 * 4 * math.sqrt(6)
    for method in ("naive", "gershgorin", "ldlt-fast", "lipsdp-neuron"):
        r = lipverify.bound(path, method=method)
        assert r.certified and exact * (1 - 1e-9) <= r.bound <= exact * (1 + 1e-6), method
    res = run("bound", path, "--format", "json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["certified"] and exact * (1 - 1e-9) <= obj["bound"] <= exact * (1 + 1e-6)


@pytest.mark.parametrize("method", ["naive", "auto", "ldlt-fast", "lipsdp-neuron"])
def test_1e308_weights_are_a_clean_numerical_error_on_the_cli(tmp_path, method):
    path = save(mlp(w1=np.full((4, 3), 1e308), w2=np.full((2, 4), 1e308),
                    elem=TensorProto.DOUBLE), tmp_path)
    res = run("bound", path, "-m", method, "--no-lower")
    if res.exit_code == 0:  # a certified finite bound would be a wrong number here
        assert not json.loads(run("bound", path, "-m", method, "--no-lower", "--format",
                                  "json").stdout)["certified"]
        return
    assert_clean_failure(res, 4, "overflow float64")


@pytest.mark.parametrize("method", ["naive", "auto", "ldlt-fast", "lipsdp-neuron"])
def test_1e308_weights_are_never_a_certified_number_in_the_api(tmp_path, method):
    """The naive product overflows to inf (not certified); the LMIs refuse (exit 4)."""
    path = save(mlp(w1=np.full((4, 3), 1e308), w2=np.full((2, 4), 1e308),
                    elem=TensorProto.DOUBLE), tmp_path)
    try:
        r = lipverify.bound(path, method=method)
    except NotApplicableError as exc:
        assert "about 1e617" in str(exc) and method in ("ldlt-fast", "lipsdp-neuron")
        return
    assert r.bound == np.inf and not r.certified


# ---------------------------------------------------------------------- weight files
def _npz(tmp_path, **arrays):
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    return path


def _nnet(tmp_path, token: str):
    path = tmp_path / "w.nnet"
    path.write_text("2,2,1,2,\n2,2,1,\n0,\n0,0,\n1,1,\n0,0,0,\n1,1,1,\n"
                    f"1,{token},\n0,1,\n0,0,\n1,1,\n0,\n")
    return path


BAD_WEIGHTS = [
    ("npz-nan-w1", lambda p: _npz(p, w1=np.full((3, 2), NAN), w2=np.ones((1, 3))), ["w1", "NaN"]),
    ("npz-inf-w2", lambda p: _npz(p, w1=np.ones((3, 2)), w2=np.full((1, 3), INF)),
     ["w2", "infinite"]),
    ("npz-nan-bias", lambda p: _npz(p, w1=np.ones((3, 2)), b1=np.array([0, NAN, 0]),
                                    w2=np.ones((1, 3))), ["b1", "NaN"]),
    ("npz-float32-nan", lambda p: _npz(p, w1=np.full((3, 2), NAN, F32), w2=np.ones((1, 3))),
     ["w1"]),
    ("nnet-nan", lambda p: _nnet(p, "nan"), ["line 8", "'nan'"]),
    ("nnet-inf", lambda p: _nnet(p, "inf"), ["line 8", "'inf'"]),
    ("nnet-overflow", lambda p: _nnet(p, "1e400"), ["line 8", "'1e400'"]),
]


@pytest.mark.parametrize("build, texts", [c[1:] for c in BAD_WEIGHTS],
                         ids=[c[0] for c in BAD_WEIGHTS])
def test_non_finite_weights_are_refused_by_name(tmp_path, build, texts):
    path = build(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        lipverify.load(path)
    for text in texts:
        assert text in str(info.value)
    res = run("bound", path, "-m", "naive", "--no-lower")
    assert_clean_failure(res, 3, path.name, *texts)


def test_mat_cell_with_nan_is_refused_by_name(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.ones((3, 2)), np.full((1, 3), NAN)
    path = tmp_path / "w.mat"
    scipy_io.savemat(path, {"weights": cells})
    with pytest.raises(ModelLoadError, match=r"weights\{2\}.*NaN"):
        lipverify.load(path)


def test_valid_nnet_still_loads(tmp_path):
    assert lipverify.load(_nnet(tmp_path, "2")).widths == [2, 2, 1]


# ----------------------------------------------------------------------- activations
BAD_ACTIVATIONS = [
    ("leaky_relu", (), "takes 1"), ("leaky_relu", (0.1, 0.2), "takes 1"),
    ("leaky_relu", (NAN,), "alpha"), ("leaky_relu", (INF,), "alpha"),
    ("leaky_relu", (-INF,), "alpha"), ("leaky_relu", ("0.1",), "must be a number"),
    ("leaky_relu", (True,), "must be a number"), ("relu", (1.0,), "takes 0"),
    ("tanh", (1.0,), "takes 0"), ("elu", (NAN,), "alpha"), ("elu", (INF,), "alpha"),
    ("elu", (1.0, 2.0), "takes 0 to 1"), ("softplus", (0.0,), "beta"),
    ("softplus", (-1.0,), "beta"), ("softplus", (NAN,), "beta"), ("softplus", (INF,), "beta"),
    ("hardtanh", (1.0, -1.0), "above max"), ("hardtanh", (NAN, 1.0), "min"),
    ("hardtanh", (INF, INF), "no finite value"), ("hardtanh", (-INF, -INF), "no finite value"),
    ("slope", (0.0,), "takes 2"), ("slope", (2.0, 1.0), "above upper"),
    ("slope", (NAN, 1.0), "alpha"), ("slope", (0.0, INF), "beta"), ("gelu", (NAN,), "k"),
    ("gelu", (INF,), "k"), ("silu", (1.0,), "takes 0"), ("bogus", (), "unknown"),
]


@pytest.mark.parametrize("name, params, text", BAD_ACTIVATIONS)
def test_bad_activation_parameters_are_usage_errors(name, params, text):
    with pytest.raises(UsageError, match=text):
        SlopeRestricted.named(name, *params)


@pytest.mark.parametrize("alpha, beta", [(NAN, 1.0), (0.0, NAN), (1.0, 0.0), (0.0, INF)])
def test_a_slope_interval_must_be_finite_and_ordered(alpha, beta):
    with pytest.raises(UsageError, match="slope interval"):
        SlopeRestricted("slope", alpha, beta)


@pytest.mark.parametrize("name, params, slopes", [
    ("leaky_relu", (0.01,), (0.01, 1.0)), ("leaky_relu", (np.float32(0.5),), (0.5, 1.0)),
    ("elu", (), (0.0, 1.0)), ("elu", (-2.0,), (-2.0, 1.0)), ("softplus", (2.0,), (0.0, 1.0)),
    ("hardtanh", (-INF, 2.0), (0.0, 1.0)), ("slope", (-0.5, 2), (-0.5, 2.0)),
    ("gelu", (0.5,), None), ("relu", (), (0.0, 1.0)),
])
def test_good_activation_parameters_still_work(name, params, slopes):
    act = SlopeRestricted.named(name, *params)
    if slopes is not None:
        assert (act.alpha, act.beta) == slopes
    assert all(isinstance(p, float) for p in act.params)


ACTIVATION_SPECS = ["leaky_relu", "leaky_relu:", "leaky_relu:nan", "leaky_relu:inf",
                    "leaky_relu:-inf", "leaky_relu:1e400", "leaky_relu:0.1,0.2", "relu:1",
                    "elu:nan", "softplus:0", "hardtanh:1,-1", "slope:0", "slope:nan,1",
                    "gelu:nan", "tanh:x", "bogus", ":"]


@pytest.mark.parametrize("spec", ACTIVATION_SPECS)
def test_activation_option_is_a_usage_error(tmp_path, spec):
    res = CliRunner().invoke(main, ["bound", SAMPLE_NPZ, "-m", "naive", "--no-lower",
                                    "--activation", spec])
    assert_clean_failure(res, 2, "--activation")
    with pytest.raises(UsageError):
        lipverify.load(SAMPLE_NPZ, activation=spec)


# --------------------------------------------------------------------- CLI options
BAD_OPTIONS = [
    (["bound", SAMPLE, "--input-shape", "garbage"], "--input-shape"),
    (["bound", SAMPLE, "--input-shape", "1,-3"], "--input-shape"),
    (["bound", SAMPLE, "--input-shape", "0"], "--input-shape"),
    (["bound", SAMPLE, "--input-shape", "1.5,2"], "--input-shape"),
    (["bound", SAMPLE, "--input-shape", "1,,2"], "--input-shape"),
    (["bound", SAMPLE, "--input-shape", "65536,65536,2"], "--input-shape"),
    (["info", SAMPLE, "--input-shape", "x"], "--input-shape"),
    (["bound", SAMPLE, "--time-limit", "nan"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "inf"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "-inf"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "-1"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "0"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "1e400"], "--time-limit"),
    (["bound", SAMPLE, "--time-limit", "soon"], "--time-limit"),
    (["bound", SAMPLE, "--solver", "bogus"], "unknown solver 'bogus'"),
    (["bound", SAMPLE, "--method", "bogus"], "unknown method"),
    (["bound", SAMPLE, "--output-rows", "a,b"], "--output-rows"),
    (["bound", SAMPLE, "--output-rows", "1.5"], "--output-rows"),
    (["bound", SAMPLE, "--output-rows", "-1"], "out of range"),
    (["bound", SAMPLE, "--output-rows", "10"], "out of range"),
    (["bound", SAMPLE, "--norm", "l7"], "l7"),
    (["compare", SAMPLE, "--activation", "leaky_relu:nan"], "--activation"),
    (["batch", SAMPLE, "--memory-limit", "-1"], "--memory-limit"),
    (["batch", SAMPLE, "--memory-limit", "0"], "--memory-limit"),
    (["batch", SAMPLE, "--memory-limit", "nan"], "--memory-limit"),
    (["batch", SAMPLE, "--memory-limit", "inf"], "--memory-limit"),
    (["batch", SAMPLE, "--time-limit", "nan"], "--time-limit"),
    (["batch", SAMPLE, "--time-limit", "-5"], "--time-limit"),
    (["batch", SAMPLE, "--input-shape", "garbage"], "--input-shape"),
    (["batch", SAMPLE, "--activation", "elu:inf"], "--activation"),
]


@pytest.mark.parametrize("args, text", BAD_OPTIONS, ids=lambda v: " ".join(v[2:]) if
                         isinstance(v, list) else None)
def test_bad_option_values_exit_2(tmp_path, monkeypatch, args, text):
    monkeypatch.chdir(tmp_path)
    extra = ["--db", str(tmp_path / "r.db"), "--executor", "inline"] if args[0] == "batch" \
        else ["--no-lower"] if args[0] == "bound" else []
    res = CliRunner().invoke(main, [*args, *extra])
    assert_clean_failure(res, 2, text)
    assert files(tmp_path) == set()  # no database, no results folder


# ---------------------------------------------------------------- API argument types
BAD_API_ARGS = [
    ({"output_rows": "3"}, "output_rows"), ({"output_rows": "0,3"}, "output_rows"),
    ({"output_rows": 3}, "output_rows"), ({"output_rows": 3.0}, "output_rows"),
    ({"output_rows": True}, "output_rows"), ({"output_rows": [True]}, "output_rows"),
    ({"output_rows": [np.bool_(True)]}, "output_rows"), ({"output_rows": [1.0]}, "output_rows"),
    ({"output_rows": [1.5]}, "output_rows"), ({"output_rows": ["1"]}, "output_rows"),
    ({"output_rows": [None]}, "output_rows"), ({"output_rows": {0, 1}}, "output_rows"),
    ({"output_rows": []}, "output_rows"), ({"output_rows": np.zeros((2, 2), int)}, "output_rows"),
    ({"output_rows": [10]}, "out of range"), ({"output_rows": [-1]}, "out of range"),
    ({"time_limit": "5"}, "time_limit"), ({"time_limit": True}, "time_limit"),
    ({"time_limit": NAN}, "time_limit"), ({"time_limit": INF}, "time_limit"),
    ({"time_limit": -1}, "time_limit"), ({"time_limit": 0}, "time_limit"),
    ({"time_limit": [5]}, "time_limit"), ({"lower_bound": "yes"}, "lower_bound"),
    ({"lower_bound": NAN}, "lower_bound"), ({"lower_bound": -1.0}, "lower_bound"),
    ({"norm": 2}, "norm"), ({"method": 3}, "method"), ({"solver": "bogus"}, "solver"),
    ({"activation": "leaky_relu:nan"}, "alpha"),
]


@pytest.mark.parametrize("kwargs, text", BAD_API_ARGS, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("method", ["naive", "lipsdp-neuron"])
def test_bad_api_arguments_are_usage_errors(kwargs, text, method):
    kwargs = {"method": method, **kwargs}
    model = SAMPLE_NPZ if "activation" in kwargs else SAMPLE
    with pytest.raises(UsageError, match=text):
        lipverify.bound(model, **kwargs)


@pytest.mark.parametrize("rows, expected", [((0, 3), (0, 3)), ([7], (7,)), (range(2), (0, 1)),
                                            (np.array([1, 2]), (1, 2)),
                                            ([np.int64(4)], (4,))])
def test_good_output_rows_are_plain_ints(rows, expected):
    r = lipverify.bound(SAMPLE, method="naive", output_rows=rows)
    assert r.output_rows == expected and all(type(i) is int for i in r.output_rows)
    json.loads(r.to_json())


def test_compare_refuses_a_string_for_a_list():
    with pytest.raises(UsageError, match="models"):
        lipverify.compare(SAMPLE)
    with pytest.raises(UsageError, match="methods"):
        lipverify.compare([SAMPLE], methods="naive")


# -------------------------------------------------------------- writing results
def _tiny_npz(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    return _npz(tmp_path, w1=rng.normal(size=(4, 3)), w2=rng.normal(size=(2, 4)))


@pytest.mark.parametrize("target", ["missing/c.json", "missing/deeper/c.json", "."])
def test_certificate_into_a_missing_folder_cli(tmp_path, target):
    model = _tiny_npz(tmp_path)
    before = files(tmp_path)
    res = run("bound", model, "-m", "lipsdp-neuron", "--no-lower", "--save-certificate",
              tmp_path / target)
    assert_clean_failure(res, 2, "--save-certificate")
    assert files(tmp_path) == before


@pytest.mark.parametrize("target", ["missing/c.json", "."])
def test_save_certificate_into_a_missing_folder_api(tmp_path, target):
    result = lipverify.bound(_tiny_npz(tmp_path), method="lipsdp-neuron")
    before = files(tmp_path)
    with pytest.raises(UsageError) as info:
        lipverify.save_certificate(result, tmp_path / target)
    assert str(tmp_path / target) in str(info.value) and "\n" not in str(info.value)
    assert files(tmp_path) == before


def test_save_certificate_leaves_only_the_file(tmp_path):
    result = lipverify.bound(_tiny_npz(tmp_path), method="lipsdp-neuron")
    before = files(tmp_path)
    lipverify.save_certificate(result, tmp_path / "c.json")
    assert files(tmp_path) - before == {tmp_path / "c.json"}
    assert json.loads((tmp_path / "c.json").read_text())["bound"] == result.bound


@pytest.mark.parametrize("target", ["missing/out.csv", "."])
def test_csv_into_a_missing_folder(tmp_path, target):
    model = _tiny_npz(tmp_path)
    before = files(tmp_path)
    res = run("compare", model, "--methods", "naive", "--csv", tmp_path / target)
    assert_clean_failure(res, 2, "--csv")
    assert files(tmp_path) == before


def test_write_csv_failure_is_a_usage_error_without_a_partial_file(tmp_path):
    from lipverify_cli.bounds import write_csv

    r = lipverify.bound(_tiny_npz(tmp_path), method="naive")
    before = files(tmp_path)
    with pytest.raises(UsageError, match="missing"):
        write_csv(str(tmp_path / "missing" / "x.csv"), [r])
    assert files(tmp_path) == before
    write_csv(str(tmp_path / "x.csv"), [r])
    assert files(tmp_path) - before == {tmp_path / "x.csv"}


# ------------------------------------------------------------------- batch plots
@pytest.fixture
def nan_db(tmp_path) -> Path:
    """A results database whose stored bounds include NaN, inf and a NaN time."""
    model = _tiny_npz(tmp_path)
    db = tmp_path / "r.db"
    res = run("batch", model, "--methods", "naive,gershgorin,lower", "--db", db,
              "--executor", "inline")
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(db)
    for key, method, text in con.execute("SELECT key, method, result FROM results").fetchall():
        d = json.loads(text)
        d["bound"] = {"naive": NAN, "lower": INF}.get(method, d["bound"])
        if method == "gershgorin":
            d["time_s"] = NAN
        con.execute("UPDATE results SET result = ? WHERE key = ?", (json.dumps(d), key))
    con.commit()
    con.close()
    return db


def test_plot_skips_non_finite_values_with_a_note(nan_db, tmp_path):
    res = run("results", "plot", "--db", nan_db, "--out", tmp_path / "plots")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "left out" in res.output
    assert len(list((tmp_path / "plots").iterdir())) == 6


def test_plot_results_with_only_nan_bounds(nan_db, tmp_path):
    from lipverify.batch import ResultsStore
    from lipverify.batch.plots import plot_results

    con = sqlite3.connect(nan_db)
    for key, text in con.execute("SELECT key, result FROM results").fetchall():
        d = json.loads(text)
        d["bound"] = d["lower_bound"] = d["time_s"] = NAN
        con.execute("UPDATE results SET result = ? WHERE key = ?", (json.dumps(d), key))
    con.commit()
    con.close()
    with ResultsStore(nan_db, create=False) as store:
        notes: list[str] = []
        written = plot_results(store.records(), tmp_path / "p", notes=notes)
    assert len(written) == 6 and any("batch-bounds-l2" in n for n in notes)
    assert any("batch-time-l2" in n for n in notes)


# ------------------------------------------------------------- errors and --debug
def _boom(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("exc, code, text", [
    (RuntimeError("boom"), 1, "internal error (RuntimeError: boom)"),
    (KeyError("x"), 1, "internal error (KeyError"),
    (OverflowError("math range error"), 5, "numerical failure"),
    (np.linalg.LinAlgError("Internal Error."), 5, "numerical failure"),
    (MemoryError("1 TiB"), 5, "out of memory"),
    (ModelLoadError("m.onnx: initializer 'w1': broken"), 3, "initializer 'w1'"),
    (NumericalError("method naive: numerical failure"), 5, "numerical failure"),
])
@pytest.mark.parametrize("command", [["bound", SAMPLE, "--no-lower"], ["info", SAMPLE]])
def test_errors_are_one_line_unless_debug(monkeypatch, exc, code, text, command):
    target = "bound" if command[0] == "bound" else "load"
    monkeypatch.setattr(lipverify, target, _boom(exc))
    res = run(*command)
    assert_clean_failure(res, code, text)
    if code == 1:
        assert "--debug" in error_lines(res.output)[0]
    res = run("--debug", *command)
    assert res.exit_code == code
    assert "Traceback" in res.stderr and text in res.stderr


def test_an_error_outside_any_command_wrapper_is_one_line(monkeypatch):
    """A bug in a command without @handle_errors still becomes one line and exit 1."""
    import lipverify_cli.registries as registries

    monkeypatch.setattr(registries.lipverify, "list_methods", _boom(ValueError("no list")))
    res = run("methods")
    assert_clean_failure(res, 1, "ValueError: no list")
    assert run("--debug", "methods").exit_code == 1


def test_debug_prints_the_traceback_of_a_domain_error():
    res = run("--debug", "bound", "no-such-file.onnx")
    assert res.exit_code == 3 and "Traceback" in res.stderr
    assert error_lines(res.stderr)[-1].endswith("no such file; check the path")
