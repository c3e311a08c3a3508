"""Hostile input: pickle-free loading by default, and strict booleans.

Every fixture is built in tmp_path at test time (no payload file is committed). A payload is a
pickle whose ``__reduce__`` touches a marker file, or Python source that does the same; a test
passes only if lipverify refuses the file (exit 3, a one-line message) AND the marker does not
exist. ``test_fixture_is_live`` checks that the payloads are real: torch's or numpy's own
permissive loaders do run them.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import SAMPLE_MODELS
from lipverify_cli.main import main
from torch import nn

import lipverify
from lipverify.batch import ResultsStore, load_manifest, run_batch
from lipverify.errors import ModelLoadError, UntrustedPickleError, UsageError
from lipverify.importers import torch_import, weights
from lipverify.options import LoadOptions, parse_bool

SAMPLE_PT2 = SAMPLE_MODELS / "digits_mlp_relu.pt2"
SAMPLE_PT = SAMPLE_MODELS / "digits_mlp_relu.pt"  # a state dict
SAMPLE_TS = SAMPLE_MODELS / "digits_mlp_relu.ts.pt"
SAMPLE_NPZ = SAMPLE_MODELS / "digits_mlp_relu.npz"


# ----------------------------------------------------------------------------- payloads
class Payload:
    """Unpickling this touches ``marker`` (no shell, no os.system)."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _saved(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def _code(marker: Path) -> str:
    """Python source that touches ``marker``."""
    return f"__import__('pathlib').Path('{marker}').touch()"


def _rewrite_pt2(dst: Path, edit=None, add=None) -> Path:
    """The sample .pt2 archive with members replaced (bytes, or a function of the old bytes)
    and members added (names inside the archive's top folder)."""
    edit, add = edit or {}, add or {}
    with zipfile.ZipFile(SAMPLE_PT2) as src, zipfile.ZipFile(dst, "w") as out:
        prefix = src.namelist()[0].split("/")[0] + "/"
        for info in src.infolist():
            inner = info.filename[len(prefix):]
            data = src.read(info.filename)
            if inner in edit:
                data = edit[inner](data) if callable(edit[inner]) else edit[inner]
            out.writestr(info, data)
        for inner, data in add.items():
            out.writestr(prefix + inner, data)
    return dst


def _edit_json(fn):
    def apply(raw: bytes) -> bytes:
        data = json.loads(raw)
        fn(data)
        return json.dumps(data).encode()

    return apply


def _add_constant(path_name: str):
    def fn(cfg):
        cfg["config"]["c0"] = {"path_name": path_name, "is_param": False, "use_pickle": True,
                               "tensor_meta": None}

    return {"data/constants/model_constants_config.json": _edit_json(fn)}


def _build(kind: str, d: Path, marker: Path) -> Path:
    """A hostile file of ``kind`` in ``d`` whose payload touches ``marker``."""
    p = Payload(marker)
    if kind == "pt_whole":  # torch.save of an object with the payload reduce
        path = d / "model.pt"
        path.write_bytes(_saved(p))
    elif kind == "pt_checkpoint":  # nested in a checkpoint dict, .pth
        path = d / "model.pth"
        path.write_bytes(_saved({"epoch": 1, "state_dict": {"w": torch.zeros(2)}, "opt": p}))
    elif kind == "pt_legacy":  # the pre-zip torch.save format
        path = d / "model.pt"
        path.write_bytes(_saved(p, _use_new_zipfile_serialization=False))
    elif kind == "pt_raw_pickle":  # a bare pickle named .pt
        path = d / "model.pt"
        path.write_bytes(pickle.dumps(p))
    elif kind == "pt_renamed_pt2":  # a .pt renamed to .pt2
        path = d / "model.pt2"
        path.write_bytes(_saved(p))
    elif kind == "ts_renamed_pt":  # a torch.save file named .ts
        path = d / "model.ts"
        path.write_bytes(_saved(p))
    elif kind == "ts_lookalike":  # a torch.save zip with TorchScript markers added
        path = d / "model.pt"
        src = zipfile.ZipFile(io.BytesIO(_saved(p)))
        prefix = src.namelist()[0].split("/")[0] + "/"
        with zipfile.ZipFile(path, "w") as out:
            for info in src.infolist():
                out.writestr(info, src.read(info.filename))
            out.writestr(prefix + "code/__torch__.py", "")
            out.writestr(prefix + "constants.pkl", pickle.dumps(p))
    elif kind == "pt2_sample_inputs":  # the sample inputs carry the payload
        path = _rewrite_pt2(d / "model.pt2", {
            "data/sample_inputs/model.pt": _saved(((torch.zeros(1, 64),), {"x": p}))})
    elif kind == "pt2_pickled_weight":  # a weight saved with use_pickle
        def cfg(c):
            c["config"]["0.weight"]["use_pickle"] = True

        path = _rewrite_pt2(d / "model.pt2", {
            "data/weights/model_weights_config.json": _edit_json(cfg),
            "data/weights/weight_0": _saved(p)})
    elif kind == "pt2_pickled_constant":  # a tensor constant saved with use_pickle
        path = _rewrite_pt2(d / "model.pt2", _add_constant("tensor_0"),
                            {"data/constants/tensor_0": _saved(p)})
    elif kind == "pt2_opaque_constant":  # an opaque object: plain pickle.loads in torch
        path = _rewrite_pt2(d / "model.pt2", _add_constant("opaque_obj_0"),
                            {"data/constants/opaque_obj_0": pickle.dumps(p)})
    elif kind == "pt2_custom_obj_constant":  # a TorchBind object
        path = _rewrite_pt2(d / "model.pt2", _add_constant("custom_obj_0"),
                            {"data/constants/custom_obj_0": pickle.dumps(p)})
    elif kind == "pt2_legacy_weights":  # the older one-file weights member
        path = _rewrite_pt2(d / "model.pt2", add={"data/weights/model.pt": _saved(p)})
    elif kind == "pt2_sym_expr":  # a shape expression: torch hands it to sympify (eval)
        def ep(j):
            sizes = j["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
            sizes[0]["as_expr"]["expr_str"] = _code(marker)

        path = _rewrite_pt2(d / "model.pt2", {"models/model.json": _edit_json(ep)})
    elif kind == "pt2_arg_names":  # FX generates Python from the argument names
        def ep(j):
            sig = j["graph_module"]["module_call_graph"][0]["signature"]
            sig["forward_arg_names"] = [f"input={_code(marker)}"]

        path = _rewrite_pt2(d / "model.pt2", {"models/model.json": _edit_json(ep)})
    elif kind == "pt2_target":  # a node calling torch.save(tensor, marker)
        def ep(j):
            for node in j["graph_module"]["graph"]["nodes"]:
                if node["name"] == "relu":
                    node["target"] = "torch.save"
                    node["inputs"].append({"name": "f", "arg": {"as_string": str(marker)},
                                           "kind": 1})

        path = _rewrite_pt2(d / "model.pt2", {"models/model.json": _edit_json(ep)})
    elif kind == "pt2_renamed_pt":  # a tampered .pt2 renamed .pt
        path = _rewrite_pt2(d / "model.pt", {
            "data/sample_inputs/model.pt": _saved(((torch.zeros(1, 64),), {"x": p}))})
    elif kind == "pt2_legacy_layout":  # torch <= 2.7 layout: torch unpickles its .pt parts
        from torch._export.serde.schema import SCHEMA_VERSION

        with zipfile.ZipFile(SAMPLE_PT2) as src:
            program = next(src.read(n) for n in src.namelist() if n.endswith("model.json"))
        path = d / "model.pt2"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("version", f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}")
            z.writestr("serialized_exported_program.json", program)
            z.writestr("serialized_state_dict.pt", _saved({}))
            z.writestr("serialized_constants.pt", _saved({"c": p}))
            z.writestr("serialized_example_inputs.pt", _saved(((torch.zeros(1, 64),), {})))
    elif kind == "pt2_zip_datapkl":  # a zip laid out like .pt2 with a payload data.pkl
        path = d / "model.pt2"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("model/archive_format", "pt2")
            z.writestr("model/archive_version", "0")
            z.writestr("model/data.pkl", pickle.dumps(p))
            z.writestr("model/byteorder", "little")
    elif kind == "npz_object":  # an object array (a pickle inside the .npy member)
        path = d / "model.npz"
        np.savez(path, w1=np.array([p, 1], dtype=object), w2=np.ones((2, 2)))
    elif kind == "npz_raw_pickle":  # a bare pickle named .npz
        path = d / "model.npz"
        path.write_bytes(pickle.dumps(p))
    elif kind == "npz_torch_zip":  # a torch.save zip named .npz
        path = d / "model.npz"
        path.write_bytes(_saved(p))
    else:
        raise KeyError(kind)
    return path


HOSTILE = [
    "pt_whole", "pt_checkpoint", "pt_legacy", "pt_raw_pickle", "pt_renamed_pt2",
    "ts_renamed_pt", "ts_lookalike", "pt2_sample_inputs", "pt2_pickled_weight",
    "pt2_pickled_constant", "pt2_opaque_constant", "pt2_custom_obj_constant",
    "pt2_legacy_weights", "pt2_sym_expr", "pt2_arg_names", "pt2_target", "pt2_renamed_pt",
    "pt2_legacy_layout", "pt2_zip_datapkl", "npz_object", "npz_raw_pickle", "npz_torch_zip",
]
#: Files that hold a pickle or code lipverify could only read by running it: the refusal is
#: an UntrustedPickleError that names the flag. The others are unreadable without running
#: anything (a plain ModelLoadError, still exit 3).
UNTRUSTED = set(HOSTILE) - {"ts_renamed_pt", "ts_lookalike", "pt2_zip_datapkl", "npz_torch_zip"}


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "the payload ran"


def _check_refusal(exc: BaseException, kind: str, path: Path) -> None:
    msg = str(exc)
    assert isinstance(exc, ModelLoadError) and exc.exit_code == 3, (type(exc), msg)
    assert "\n" not in msg and str(path) in msg
    if kind in UNTRUSTED:
        assert isinstance(exc, UntrustedPickleError), msg
        assert "trust_pickle=True" in msg and "--trust-pickle" in msg


def _manifest(tmp_path: Path, entry: dict, **top) -> Path:
    m = tmp_path / "batch.yaml"
    m.write_text(yaml.safe_dump({"models": [entry], "methods": ["naive"], **top}))
    return m


def _run_manifest(tmp_path: Path, manifest: Path):
    db = tmp_path / "r.db"
    summary = run_batch(load_manifest(manifest), db, executor="inline")
    with ResultsStore(db, create=False) as store:
        return summary, list(store.records())


# ------------------------------------------------------------------------ refused: 3 ways
@pytest.mark.parametrize("kind", HOSTILE)
def test_api_refuses(kind, tmp_path, marker):
    path = _build(kind, tmp_path, marker)
    with pytest.raises(ModelLoadError) as info:
        lipverify.load(path)
    _check_refusal(info.value, kind, path)


@pytest.mark.parametrize("kind", HOSTILE)
def test_cli_refuses(kind, tmp_path, marker):
    path = _build(kind, tmp_path, marker)
    res = CliRunner().invoke(main, ["bound", str(path), "--method", "naive"])
    assert res.exit_code == 3, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and path.name in errors[0], res.stderr
    if kind in UNTRUSTED:
        assert "--trust-pickle" in errors[0]


@pytest.mark.parametrize("kind", HOSTILE)
def test_batch_job_refuses(kind, tmp_path, marker):
    path = _build(kind, tmp_path, marker)
    summary, records = _run_manifest(tmp_path, _manifest(tmp_path, {"path": str(path)}))
    assert (summary.ok, summary.errors) == (0, 1)
    (record,) = records
    assert record.exit_code == 3 and "\n" not in record.error
    expected = "UntrustedPickleError" if kind in UNTRUSTED else "ModelLoadError"
    assert record.error.startswith(expected + ":"), record.error


@pytest.mark.parametrize("kind", ["pt_whole", "pt2_sample_inputs", "npz_object"])
def test_direct_importer_calls_refuse(kind, tmp_path, marker):
    """The loaders themselves (not only lipverify.load) default to no unpickling and read
    a string flag strictly."""
    path = _build(kind, tmp_path, marker)
    loader = weights.load_npz if kind.startswith("npz") else torch_import.load_torch_file
    for flag in (False, "no", "0"):
        with pytest.raises(UntrustedPickleError):
            loader(path, trust_pickle=flag)
    with pytest.raises(UsageError, match="trust_pickle"):
        loader(path, trust_pickle="maybe")


def test_pt2_importer_refuses(tmp_path, marker):
    path = _build("pt2_pickled_constant", tmp_path, marker)
    with pytest.raises(UntrustedPickleError, match="opaque|tensor_0"):
        torch_import.load_exported_file(path)


def test_state_dict_file_is_read_safely(tmp_path, marker):
    path = tmp_path / "weights.pt"
    path.write_bytes(_saved({"0.weight": torch.zeros(3, 4), "extra": Payload(marker)}))
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        lipverify.load(nn.Sequential(nn.Linear(4, 3)), state_dict=path)
    with pytest.raises(UntrustedPickleError):
        lipverify.load(nn.Sequential(nn.Linear(4, 3)), state_dict=path, trust_pickle="off")


def test_guard_code_is_not_run(tmp_path, marker):
    """Guards are Python source that ExportedProgram.module() exec's: they are dropped (with a
    note) and the program still loads."""
    def ep(j):
        j["guards_code"] = [f"{_code(marker)} is None"]

    path = _rewrite_pt2(tmp_path / "guarded.pt2", {"models/model.json": _edit_json(ep)})
    net = lipverify.load(path)
    assert net.input_dim == 64
    assert any("guard" in n for n in net.provenance.notes)


# ------------------------------------------------------- the payloads are real payloads
LIVE_TORCH = ["pt_whole", "pt_checkpoint", "pt_legacy", "pt_raw_pickle", "pt_renamed_pt2"]
LIVE_EXPORT = ["pt2_sample_inputs", "pt2_pickled_weight", "pt2_pickled_constant",
               "pt2_opaque_constant", "pt2_legacy_weights", "pt2_sym_expr", "pt2_legacy_layout"]


@pytest.mark.parametrize("kind", [*LIVE_TORCH, *LIVE_EXPORT, "npz_object"])
def test_fixture_is_live(kind, tmp_path):
    """torch.load(weights_only=False), torch.export.load and np.load(allow_pickle=True) do
    run these payloads: the refusals above are not vacuous."""
    m = tmp_path / "PAYLOAD_RAN"
    path = _build(kind, tmp_path, m)
    try:
        if kind in LIVE_TORCH:
            torch.load(path, weights_only=False)
        elif kind in LIVE_EXPORT:
            torch.export.load(str(path))
        else:
            with np.load(path, allow_pickle=True) as data:
                data["w1"]
    except Exception:  # noqa: BLE001 - the payload runs before the loader notices a problem
        pass
    assert m.exists()


# --------------------------------------------------------------- legitimate files still load
def test_sample_pt2_loads_without_trust():
    net = lipverify.load(SAMPLE_PT2)
    ref = lipverify.load(SAMPLE_MODELS / "digits_mlp_relu.onnx")
    assert net.provenance.format == "torch-export"
    assert any("without unpickling" in n for n in net.provenance.notes)
    x = np.random.default_rng(0).random((5, 64))
    assert np.allclose(net.forward(x), ref.forward(x), atol=1e-9)
    trusted = lipverify.load(SAMPLE_PT2, trust_pickle=True)  # the same safe reader
    assert np.array_equal(trusted.forward(x), net.forward(x))


def test_sample_pt2_cli_and_batch_without_trust(tmp_path):
    res = CliRunner().invoke(main, ["bound", str(SAMPLE_PT2), "--method", "naive",
                                    "--format", "json", "--no-lower"])
    assert res.exit_code == 0, res.output
    onnx = lipverify.bound(SAMPLE_MODELS / "digits_mlp_relu.onnx", method="naive").bound
    assert json.loads(res.stdout)["bound"] == pytest.approx(onnx, rel=1e-12)
    summary, _ = _run_manifest(tmp_path, _manifest(tmp_path, {"path": str(SAMPLE_PT2)}))
    assert (summary.ok, summary.errors) == (1, 0)


def test_sample_state_dict_and_torchscript_need_no_trust():
    arch = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10))
    net = lipverify.load(arch, state_dict=SAMPLE_PT)  # weights only: the safe unpickler
    assert [net.input_dim, net.output_dim] == [64, 10]
    for trust in (False, True):  # a bare state dict is not a model, trusted or not
        with pytest.raises(UsageError, match="only weights"):
            lipverify.load(SAMPLE_PT, trust_pickle=trust)
    assert lipverify.load(SAMPLE_TS).provenance.format == "torchscript"
    assert lipverify.load(SAMPLE_NPZ).input_dim == 64


@pytest.fixture
def whole_model(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)), path)
    return path


@pytest.mark.parametrize("flag", [True, "true", "YES", "on", 1, "1"])
def test_trusted_whole_model_loads(whole_model, flag):
    net = lipverify.load(whole_model, trust_pickle=flag)
    assert net.provenance.format == "torch-pickle" and net.input_dim == 5


@pytest.mark.parametrize("flag", [False, "false", "no", "NO", "off", 0, "0"])
def test_false_flags_keep_refusing(whole_model, flag):
    with pytest.raises(UntrustedPickleError):
        lipverify.load(whole_model, trust_pickle=flag)


def test_trusted_object_npz_loads(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, w1=np.array(np.eye(3), dtype=object), w2=np.ones((2, 3)))
    with pytest.raises(UntrustedPickleError, match="'w1' is an object array"):
        lipverify.load(path)
    net = lipverify.load(path, trust_pickle=True)
    assert (net.input_dim, net.output_dim) == (3, 2)


# ----------------------------------------------------------- strict booleans: trust_pickle
FALSE_FLAGS = ["no", "false", "0", "off", "No", 0, False]
BAD_FLAGS = ["maybe", "", "y", 2, -1, 1.0, 0.0, None, [True]]


@pytest.mark.parametrize("flag", FALSE_FLAGS)
def test_api_false_strings_are_false(flag, tmp_path, marker):
    path = _build("pt_whole", tmp_path, marker)
    with pytest.raises(UntrustedPickleError):
        lipverify.load(path, trust_pickle=flag)


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_api_bad_flag_is_a_usage_error(flag, tmp_path, marker):
    path = _build("pt_whole", tmp_path, marker)
    with pytest.raises(UsageError, match="for trust_pickle") as info:
        lipverify.load(path, trust_pickle=flag)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="for trust_pickle"):
        lipverify.bound(path, method="naive", trust_pickle=flag)


@pytest.mark.parametrize("flag", FALSE_FLAGS)
def test_manifest_false_strings_are_false(flag, tmp_path, marker):
    path = _build("pt2_sample_inputs", tmp_path, marker)
    manifest = _manifest(tmp_path, {"path": str(path), "trust_pickle": flag})
    (spec,) = load_manifest(manifest).models
    assert spec.options["trust_pickle"] is False  # a real bool reaches the job
    summary, (record,) = _run_manifest(tmp_path, manifest)
    assert summary.errors == 1 and record.exit_code == 3
    assert record.error.startswith("UntrustedPickleError:")


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_manifest_bad_flag_is_refused_before_any_job(flag, tmp_path, marker):
    path = _build("pt_whole", tmp_path, marker)
    manifest = _manifest(tmp_path, {"path": str(path), "trust_pickle": flag})
    with pytest.raises(UsageError, match=r"models\[0\]: bad value .* for trust_pickle"):
        load_manifest(manifest)
    res = CliRunner().invoke(main, ["batch", str(manifest), "--db", str(tmp_path / "r.db"),
                                    "--executor", "inline"])
    assert res.exit_code == 2 and "trust_pickle" in res.output
    assert not (tmp_path / "r.db").exists()


def test_manifest_other_booleans_are_strict(tmp_path):
    npz = tmp_path / "net.npz"
    np.savez(npz, w1=np.ones((3, 2)), w2=np.ones((1, 3)))
    good = _manifest(tmp_path, {"path": str(npz), "keep_softmax": "yes"},
                     options={"lower_bound": "no"})
    manifest = load_manifest(good)
    assert manifest.models[0].options["keep_softmax"] is True
    assert manifest.option_sets == ({"lower_bound": False},)
    bad = _manifest(tmp_path, {"path": str(npz), "keep_softmax": "maybe", "optional": "perhaps"},
                    options={"lower_bound": "sometimes"})
    with pytest.raises(UsageError) as info:
        load_manifest(bad)
    msg = str(info.value)
    for text in ("for keep_softmax", "for optional", "for lower_bound", "3 problem(s)"):
        assert text in msg, text
    missing = _manifest(tmp_path, {"path": str(tmp_path / "absent.npz"), "optional": "no"})
    with pytest.raises(UsageError, match="no such model file"):
        load_manifest(missing)  # "no" is not optional
    skipped = _manifest(tmp_path, {"path": str(tmp_path / "absent*.npz"), "optional": "yes"})
    assert load_manifest(skipped).models == ()  # "yes" is optional: skipped quietly


# ------------------------------------------------------------------ parse_bool and records
@pytest.mark.parametrize("value", [True, 1, "true", "True", "YES", "yes", "on", "ON", "1",
                                   " yes ", np.bool_(True)])
def test_parse_bool_true(value):
    assert parse_bool(value, "x") is True


@pytest.mark.parametrize("value", [False, 0, "false", "FALSE", "no", "off", "Off", "0",
                                   np.bool_(False)])
def test_parse_bool_false(value):
    assert parse_bool(value, "x") is False


@pytest.mark.parametrize("value", ["maybe", "", "y", "n", "tru", "2", 2, -1, 10**40, 1.0, 0.5,
                                   float("nan"), None, [], {}, b"yes"])
def test_parse_bool_rejects(value):
    with pytest.raises(UsageError) as info:
        parse_bool(value, "the_option")
    msg = str(info.value)
    assert "for the_option" in msg and "\n" not in msg and info.value.exit_code == 2


def test_parse_bool_none_only_when_allowed():
    assert parse_bool(None, "x", allow_none=True) is None
    with pytest.raises(UsageError):
        parse_bool(None, "x")


@pytest.mark.parametrize("key", ["keep_softmax", "trust_pickle", "nnet_normalize"])
def test_load_options_parse_booleans(key):
    assert getattr(LoadOptions.from_dict({key: "no"}), key) is False
    assert getattr(LoadOptions.from_dict({key: "On"}), key) is True
    for bad in ("maybe", 2, None, 1.5):
        with pytest.raises(UsageError, match=f"for {key}"):
            LoadOptions.from_dict({key: bad})


def test_nnet_normalize_is_strict():
    with pytest.raises(UsageError, match="nnet_normalize"):
        weights.load_nnet("unused.nnet", nnet_normalize="maybe")


def test_renamed_sample_pt2_loads_as_pt(tmp_path):
    """Content, not suffix, decides: a .pt2 archive named .pt goes through the safe reader."""
    path = tmp_path / "renamed.pt"
    shutil.copy(SAMPLE_PT2, path)
    net = lipverify.load(path)
    assert net.provenance.format == "torch-export" and net.input_dim == 64


def test_garbage_npz_is_not_called_a_pickle(tmp_path):
    """numpy takes any non-zip, non-.npy file for a pickle; only a real pickle header is
    reported as one."""
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="not a zip archive") as info:
        lipverify.load(path)
    assert not isinstance(info.value, UntrustedPickleError)


# ------------------------------------------------------- the .pt2 program JSON checks
@pytest.mark.parametrize("expr", [
    "Symbol('s31', positive=True, integer=True)",
    "Mul(Integer(64), Symbol('s0', integer=True, positive=True))",
    "64*s0", "Max(1, s0 - 1)", "FloorDiv(s0, 2) + Mod(s1, 3)", "s0**2", "-s0", "s0 >= 2",
])
def test_shape_expressions_that_pass(expr):
    assert torch_import._check_sym_expr(expr) is None


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "Symbol('s0').__class__", "(lambda: 1)()",
    "[x for x in ()]", "Symbol('a b')", "exec('1')", "getattr(Symbol, 'x')", "s0 ** s1",
    "2 ** 100000", "Symbol(s0=open)", "s0[0]", "x := 1", "f'{s0}'", "Symbol('_x')",
    "s0 if s1 else s2", "s0" * 3000,
])
def test_shape_expressions_that_are_refused(expr):
    assert torch_import._check_sym_expr(expr) is not None


@pytest.mark.parametrize("field, ok", [
    ({"target": "torch.ops.aten.relu.default"}, True),
    ({"target": "torch.ops.higher_order.wrap_with_set_grad_enabled"}, True),
    ({"target": "_operator.getitem"}, True),
    ({"target": "torch.sym_max"}, True),
    ({"target": "torch.save"}, False),
    ({"target": "torch.hub.load"}, False),
    ({"target": "torch.ops.aten.from_file.default"}, False),
    ({"target": "torch.ops.mylib.op.default"}, False),
    ({"target": "#extension.op"}, False),
    ({"as_operator": "torch.load"}, False),
    ({"name": "relu_1"}, True),
    ({"name": "x=print(1)"}, False),
    ({"name": "a\nb"}, False),
    ({"name": "a'b"}, False),
    ({"bad key!": 1}, False),
    ({"as_string": "ij,jk->ik"}, True),
    ({"as_strings": ["same", "valid"]}, True),
    ({"as_string": "a\nb"}, False),
    ({"in_spec": '[1, {"type": "builtins.tuple", "context": "null", "children_spec": []}]'},
     True),
    ({"in_spec": '[1, {"type": "os.system(1)", "context": "null"}]'}, False),
    ({"metadata": {"stack_trace": 'File "x.py", line 1\n  import os'}}, True),
])
def test_program_json_fields(field, ok):
    data = {"graph_module": {"graph": {"nodes": [field]}}}
    if ok:
        cleaned, _ = torch_import._clean_program_json(data, Path("m.pt2"), "models/model.json")
        node = cleaned["graph_module"]["graph"]["nodes"][0]
        assert node.get("metadata", {}) == {}
    else:
        with pytest.raises(UntrustedPickleError, match=r"m.pt2: models/model.json field") as e:
            torch_import._clean_program_json(data, Path("m.pt2"), "models/model.json")
        assert "\n" not in str(e.value)


def test_program_json_guards_are_dropped_and_counted():
    data = {"guards_code": ["L['x'].size()[0] == 2", "exec('x')"], "a": [[[1]]]}
    cleaned, dropped = torch_import._clean_program_json(data, Path("m.pt2"), "model.json")
    assert cleaned["guards_code"] == [] and dropped == 2


def test_program_json_depth_is_bounded():
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(UntrustedPickleError, match="nested too deeply"):
        torch_import._clean_program_json({"a": deep}, Path("m.pt2"), "model.json")
