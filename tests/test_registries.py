"""Registry conformance: a second, different entry under one key is refused everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lipverify.errors import LipverifyError

sys.path.insert(0, str(Path(__file__).parent))
from lipverify.importers import IMPORTERS, register_importer
from lipverify.importers.onnx_movement import MOVEMENT
from lipverify.importers.onnx_registry import CONVERTERS, converter, get_converter, supported_ops
from lipverify.methods import METHODS, get_method, register_method


def _other(*args, **kwargs):  # pragma: no cover - never called
    return None


def test_duplicate_onnx_converter_is_refused():
    with pytest.raises(LipverifyError, match="ONNX converters: 'Relu \\(since opset 1\\)' is "
                                             "already registered"):
        converter("Relu")(_other)
    assert all(v for v in CONVERTERS.values())


STRUCTURAL_OPS = ("Constant", "Shape", "Size", "Concat")


@pytest.mark.parametrize("op", STRUCTURAL_OPS)
def test_structural_onnx_ops_go_through_the_registry(op):
    fn = get_converter(op, 13)
    assert fn is not None and fn.__module__ == "lipverify.importers.onnx_ops.structural"
    with pytest.raises(LipverifyError, match=f"ONNX converters: '{op} \\(since opset 1\\)' is "
                                             "already registered"):
        converter(op)(_other)
    assert get_converter(op, 13) is fn


def test_supported_onnx_ops_are_the_registries_keys():
    import inspect

    from lipverify.importers import onnx_import

    assert supported_ops() == sorted({*CONVERTERS, *MOVEMENT})
    assert set(STRUCTURAL_OPS) <= set(supported_ops())
    source = inspect.getsource(onnx_import)
    assert not [op for op in STRUCTURAL_OPS if f'"{op}"' in source]  # no special cases


def test_duplicate_method_and_importer_are_refused():
    get_method("naive")
    with pytest.raises(LipverifyError, match="methods: 'naive' is already registered"):
        register_method("naive")(_other)
    with pytest.raises(LipverifyError, match="importers: '.onnx' is already registered"):
        register_importer(".onnx")(_other)
    assert METHODS["naive"].fn.__name__ == "naive" and IMPORTERS[".onnx"].__name__ == "load_onnx"


def test_registering_the_same_function_again_is_harmless():
    info = get_method("naive")
    register_method("naive", norms=info.norms, summary=info.summary)(info.fn)
    assert get_method("naive").fn is info.fn


# ------------------------------------------------------------------ importers conformance
def _sample(suffix: str, tmp_path):
    """A model file with ``suffix`` and its expected widths (the sample digits MLP)."""
    import shutil

    import numpy as np
    import scipy.io
    from conftest import SAMPLE_MODELS, shared_path

    relu = SAMPLE_MODELS / "digits_mlp_relu"
    widths = [64, 64, 32, 10]
    if suffix in (".onnx", ".npz", ".pt2"):
        return relu.with_suffix(suffix), widths
    if suffix in (".pt", ".pth", ".ts"):
        path = tmp_path / f"model{suffix}"
        shutil.copy(SAMPLE_MODELS / "digits_mlp_relu.ts.pt", path)  # a TorchScript archive
        return path, widths
    if suffix == ".mat":
        rng = np.random.default_rng(0)
        ws = [rng.normal(size=(5, 3)), rng.normal(size=(2, 5))]
        path = tmp_path / "model.mat"
        cell = np.empty((1, 2), dtype=object)
        cell[0, 0], cell[0, 1] = ws
        scipy.io.savemat(path, {"weights": cell})
        return path, [3, 5, 2]
    if suffix == ".nnet":
        return shared_path("weights", "ACASXU_run2a_1_1_batch_2000.nnet"), [5, 50, 50, 50, 50,
                                                                            50, 50, 5]
    raise AssertionError(f"no sample for {suffix}: add one for the new importer")


def _importer_suffixes():
    from lipverify.importers import supported_suffixes

    return sorted(supported_suffixes())


@pytest.mark.parametrize("suffix", _importer_suffixes())
def test_every_importer_loads_its_format(suffix, tmp_path):
    import numpy as np

    import lipverify

    path, widths = _sample(suffix, tmp_path)
    kw = {"layout": "out-in"} if suffix == ".mat" else {}
    net = lipverify.load(path, **kw)
    assert isinstance(net, lipverify.Network) and net.widths == widths
    assert net.provenance.sha256 and len(net.provenance.sha256) == 64
    y = net.forward(np.random.default_rng(0).normal(size=(3, net.input_dim)))
    assert y.shape == (3, widths[-1]) and np.isfinite(y).all()
    with pytest.raises(lipverify.errors.ModelLoadError):
        lipverify.load(tmp_path / f"missing{suffix}")


# ------------------------------------------------------------------ executors conformance
def _executors():
    from lipverify.batch.execute import list_executors

    return [e.name for e in list_executors()]


@pytest.mark.parametrize("name", _executors())
def test_every_executor_runs_a_batch_to_the_same_results(name, tmp_path):
    from conftest import SAMPLE_MODELS

    from lipverify.batch import manifest_from_paths, run_batch
    from lipverify.batch.execute import EXECUTORS
    from lipverify.batch.store import ResultsStore

    info = EXECUTORS[name]
    if info.unavailable():
        pytest.skip(info.unavailable())
    manifest = manifest_from_paths([SAMPLE_MODELS / "digits_mlp_relu.onnx"],
                                   ["naive", "ldlt-fast"])
    extra = {}
    cluster = None
    if name == "dask":
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        extra["scheduler"] = cluster.scheduler_address
    try:
        summary = run_batch(manifest, tmp_path / "r.db", executor=name, **extra)
    finally:
        if cluster is not None:
            cluster.close()
    assert (summary.ok, summary.errors) == (2, 0)
    with ResultsStore(tmp_path / "r.db") as store:
        got = {r.method: r.result.bound for r in store.records()}
    import lipverify

    net = lipverify.load(SAMPLE_MODELS / "digits_mlp_relu.onnx")
    assert got == {m: lipverify.bound(net, method=m).bound for m in ("naive", "ldlt-fast")}


# ------------------------------------------------------------ certificate kinds conformance
def _kind_cases():
    import numpy as np
    from test_residual import resnet

    import lipverify
    from lipverify.ir.activations import SlopeRestricted

    relu = SlopeRestricted.named("relu")
    rng = np.random.default_rng(2)
    chain = lipverify.Network.sequential(
        [rng.normal(size=(5, 3)), rng.normal(size=(5, 5)), rng.normal(size=(2, 5))], [relu] * 2)
    dag = resnet([(rng.normal(size=(6, 6)) * 0.3, rng.normal(size=(6, 6)) * 0.3)] * 2,
                 np.random.default_rng(3), m=6)
    wide = lipverify.Network.sequential([rng.normal(size=(40, 3)), rng.normal(size=(2, 40))],
                                        [relu])
    from lipverify.ir.linear import Conv2d

    conv = lipverify.Network.sequential(
        [Conv2d(rng.normal(size=(2, 1, 3, 3)), (1, 4, 4), pads=(1, 1, 1, 1)),
         rng.normal(size=(3, 32))], [relu], input_shape=(1, 4, 4))
    return {"lipsdp-spectral": (conv, "l2", "lipsdp-spectral"),
            "lipsdp-l2": (chain, "l2", "lipsdp-neuron"), "lipsdp-dag": (dag, "l2", "lipsdp-neuron"),
            "lipsdp-linf": (chain, "linf", "lipsdp-neuron"),
            "lipsdp-wide": (wide, "l2", "lipsdp-wide")}


def test_every_certificate_kind_is_covered():
    from lipverify.certify.files import CERTIFICATE_KINDS

    assert set(CERTIFICATE_KINDS) == set(_kind_cases())


@pytest.mark.parametrize("kind", sorted(_kind_cases()))
def test_every_certificate_kind_checks_and_rejects(kind):
    """Saved, re-checked from scratch (valid, the same bound); a lowered rho is rejected."""
    import copy

    import lipverify
    from lipverify.certify.files import certificate_dict

    net, norm, method = _kind_cases()[kind]
    r = lipverify.bound(net, method=method, norm=norm)
    cert = certificate_dict(r)
    assert cert["certificate"]["kind"] == kind
    ok = lipverify.check_certificate(net, cert)
    assert ok.valid and ok.bound == pytest.approx(r.bound, rel=1e-9)
    bad = copy.deepcopy(cert)
    body = bad["certificate"]
    for row in body.get("rows", [body]):
        row["rho"] = float(row["rho"]) * 0.25
    assert not lipverify.check_certificate(net, bad).valid


def test_data_movement_ops_refuse_a_duplicate():
    from lipverify.errors import LipverifyError
    from lipverify.importers.onnx_movement import MOVEMENT, movement

    before = MOVEMENT["Reshape"]
    with pytest.raises(LipverifyError, match="already registered"):
        movement("Reshape")(lambda x, arg, fill: x)
    assert MOVEMENT["Reshape"] is before
