"""Registry conformance: a second, different entry under one key is refused everywhere."""

from __future__ import annotations

import pytest

from lipverify.errors import LipverifyError
from lipverify.importers import IMPORTERS, register_importer
from lipverify.importers.onnx_registry import CONVERTERS, converter
from lipverify.methods import METHODS, get_method, register_method


def _other(*args, **kwargs):  # pragma: no cover - never called
    return None


def test_duplicate_onnx_converter_is_refused():
    with pytest.raises(LipverifyError, match="ONNX converters: 'Relu \\(since opset 1\\)' is "
                                             "already registered"):
        converter("Relu")(_other)
    assert all(v for v in CONVERTERS.values())


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
