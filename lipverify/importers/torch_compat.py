"""The one home of every access to torch internals (private modules and names).

torch offers no public API for what the PyTorch importer
(:mod:`~lipverify.importers.torch_import`) takes from here:

* :func:`onnx_registration` and :func:`onnx_exporter_core`
  (``torch.onnx._internal.exporter._registration`` and ``._core``): the torchlib op
  registry built once, and the exporter that takes it (``torch.onnx.export`` rebuilds the
  registry on every call: ~1 s each);
* :func:`export_serde` (``torch._export.serde.schema``, ``torch._export.serde.serialize``,
  ``torch.export.pt2_archive._package``): reading a ``.pt2`` archive without unpickling
  (``torch.export.load`` unpickles its parts);
* :data:`DYNAMO_LOGGER`: the logger silenced during export.

Versions: pyproject asks for ``torch>=2.2`` with no upper bound; ``requirements.lock`` pins
``torch==2.13.0``, the version these names are checked against. torch moves its internals
between releases without notice. When one of these modules or names is missing, its
accessor raises :class:`~lipverify.errors.ModelLoadError` naming the torch version and the
missing piece (never a bare ImportError), and the importer falls back: the ONNX export goes
through the public ``torch.onnx.export`` (which rebuilds the registry: ~1 s per export),
and a ``.pt2``
archive is refused as :class:`~lipverify.errors.UntrustedPickleError` unless
``trust_pickle=True`` lets ``torch.export.load`` read it. A renamed logger only lets the
exporter's chatter through.

torch is imported only inside the accessors, so importing lipverify stays fast.
"""

from __future__ import annotations

import importlib

from ..errors import ModelLoadError

#: The logger of torch's graph capture (TorchDynamo), silenced during export.
DYNAMO_LOGGER = "torch._dynamo"


def torch_version() -> str:
    """The installed torch's version string ("not installed" without torch)."""
    try:
        import torch
    except ImportError:
        return "not installed"
    return str(torch.__version__)


def _missing(what: str, purpose: str, exc: ImportError) -> ModelLoadError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return ModelLoadError(
        f"torch {torch_version()} lacks {what} ({reason}), which lipverify uses to {purpose}"
    )


def _private_module(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _missing(name, purpose, exc) from exc


def onnx_registration():
    """``torch.onnx._internal.exporter._registration`` (its ``ONNXRegistry``)."""
    return _private_module("torch.onnx._internal.exporter._registration",
                           "build the torchlib op registry once")


def onnx_exporter_core():
    """``torch.onnx._internal.exporter._core`` (its ``export`` takes a prebuilt registry)."""
    return _private_module("torch.onnx._internal.exporter._core",
                           "export to ONNX with a prebuilt op registry")


def export_serde():
    """torch's ``.pt2`` reading pieces that do not unpickle, as one namespace: ``schema``,
    ``C`` (the archive's constants), ``Reader``, ``build_file_map``, ``to_dataclass``,
    ``Deserializer``, ``size``, ``stride``, ``offset``."""
    from types import SimpleNamespace

    try:
        from torch._export.serde import schema
        from torch._export.serde.serialize import (
            ExportedProgramDeserializer,
            _dict_to_dataclass,
            deserialize_size,
            deserialize_storage_offset,
            deserialize_stride,
        )
        from torch.export.pt2_archive import constants
        from torch.export.pt2_archive._package import PT2ArchiveReader, _build_file_map
    except ImportError as exc:
        raise _missing("torch._export.serde or torch.export.pt2_archive._package",
                       "read .pt2 archives without unpickling", exc) from exc

    return SimpleNamespace(
        schema=schema, C=constants, Reader=PT2ArchiveReader, build_file_map=_build_file_map,
        to_dataclass=_dict_to_dataclass, Deserializer=ExportedProgramDeserializer,
        size=deserialize_size, stride=deserialize_stride, offset=deserialize_storage_offset,
    )
