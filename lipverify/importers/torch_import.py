"""PyTorch importer: nn.Module, ExportedProgram or TorchScript -> ONNX (in memory) -> Network.

The module is copied, put in eval mode and converted to float64 (so the ONNX
initializers hold the weights exactly), exported to ONNX in memory and handed to
:func:`~lipverify.importers.onnx_import.network_from_onnx`: one converter for
every op, whatever the source.

Export route: ``torch.export.export(strict=False)`` then ``torch.onnx.export(
dynamo=True, optimize=True)`` with a *static* batch of 1. That yields the
simplest graphs (no Shape/Gather chains; ``x.reshape(B, -1, 2).sort(-1)``
becomes ``Reshape -> TopK(largest=0) -> Reshape``; BatchNorm after a Conv is
folded into it). TorchScript modules, and modules ``torch.export`` cannot
trace, go through the TorchScript exporter (``dynamo=False``) followed by the
onnxscript optimizer, which folds its shape arithmetic to the same forms.

File loaders: ``.pt2`` (``torch.export.save``), ``.ts`` (TorchScript) and
``.pt``/``.pth``, which may hold a TorchScript archive, a state dict (weights
only: the architecture must come from Python), or a whole pickled model (loaded
only with ``trust_pickle=True``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import math
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ..errors import ModelLoadError, UntrustedPickleError, UsageError
from ..ir.network import Network, Provenance
from . import register_importer

#: Layers that do not change the flattened input and may precede the first Linear.
_TRANSPARENT = ("Flatten", "Identity", "Dropout", "AlphaDropout")
#: Keys under which checkpoints commonly nest their state dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")


# --------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_script(module) -> bool:
    import torch

    return isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and log chatter (e.g. "torchvision is not installed")."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch.export",
            "torch._dynamo",
            "onnxscript",
            "torch.fx.experimental",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().cpu().contiguous().reshape(-1)
    try:
        return t.view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # quantized or exotic dtypes
        return repr(t.tolist()).encode()


def state_dict_sha256(state_dict: Mapping) -> str:
    """sha256 of a canonical serialization: sorted keys, dtype, shape and raw bytes.

    ``torch.save`` writes a random serialization id, so its bytes are not a stable digest.
    """
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict, key=str):
        value = state_dict[key]
        h.update(str(key).encode() + b"\0")
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode() + b"\0")
            h.update(_tensor_bytes(value))
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_tensor_mapping(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _find_state_dict(obj) -> tuple[Mapping | None, str]:
    """The state dict in ``obj`` (itself, or nested under a usual checkpoint key)."""
    if _is_tensor_mapping(obj):
        return obj, ""
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return obj[key], key
        nested = [k for k, v in obj.items() if _is_tensor_mapping(v)]
        if len(nested) == 1:
            return obj[nested[0]], nested[0]
    return None, ""


def _torch_load(path: Path, *, weights_only: bool):
    """``torch.load`` with every failure turned into a one-line lipverify error."""
    import pickle

    import torch

    try:
        with _quiet():
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if weights_only and ("Unsupported global" in message or "GLOBAL" in message):
            found = re.search(r"GLOBAL (\S+)", message)
            what = f" ({found.group(1)})" if found else ""
            raise UntrustedPickleError(
                f"{path}: the file pickles Python objects{what}, most likely a whole model; "
                "unpickling can run arbitrary code. Pass trust_pickle=True (CLI --trust-pickle) "
                "only if the file comes from a trusted source, or save the model as TorchScript "
                "(torch.jit.save), torch.export (.pt2) or ONNX instead"
            ) from exc
        raise ModelLoadError(
            f"{path}: corrupt or truncated PyTorch file ({_one_line(exc)})"
        ) from exc
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise ModelLoadError(
            f"{path}: the pickled model needs Python code that is not importable here "
            f"({_one_line(exc)}); import or define its classes before loading, or save it as "
            "TorchScript or .pt2"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # zip/pickle/EOF errors of every kind
        raise ModelLoadError(
            f"{path}: corrupt or truncated PyTorch file ({_one_line(exc)})"
        ) from exc


# ------------------------------------------------------------------- input shape
def _type_name(module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _first_layer(module):
    """The first leaf layer, walking Sequentials (skipping Flatten/Dropout) and first children."""
    for _ in range(64):
        children = list(module.children())
        if not children:
            return module
        if _type_name(module) == "Sequential":
            rest = [c for c in children if _type_name(c) not in _TRANSPARENT]
            if not rest:
                return None
            module = rest[0]
        else:
            module = children[0]
    return None


def _infer_input_shape(module) -> tuple[int, ...] | None:
    layer = _first_layer(module)
    if layer is not None and _type_name(layer) == "Linear":
        n = int(getattr(layer, "in_features", 0) or 0)
        if n <= 0 and hasattr(layer, "weight") and layer.weight is not None:
            n = int(layer.weight.shape[-1])
        if n > 0:
            return (n,)
    return None


def _shape_from_exported(program) -> tuple[int, ...] | None:
    """Input shape (without batch) recorded in an ExportedProgram's single user input."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        raise UsageError(
            f"the exported program takes {len(names)} inputs; lipverify needs exactly one"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            val = node.meta.get("val")
            if val is None or len(val.shape) < 2:
                return None
            return tuple(int(s) for s in val.shape[1:])
    return None


def _exported_batch(program) -> int | None:
    """The static batch size an ExportedProgram was traced with (None: dynamic)."""
    names = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if val is not None and len(val.shape) >= 1:
                dim = val.shape[0]
                return int(dim) if isinstance(dim, int) else None
    return None


def _example(input_shape, example_input):
    import torch

    if example_input is not None:
        x = torch.as_tensor(example_input)
        if x.ndim < 2:
            raise UsageError(
                f"example_input has shape {tuple(x.shape)}; it must include the batch "
                "dimension, e.g. x[None]"
            )
        return x[:1].detach().to(torch.float64).clone()
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"input_shape must be a tuple of ints, got {input_shape!r}") from exc
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"input_shape must be positive sizes (without the batch), got {shape}")
    gen = torch.Generator().manual_seed(0)
    return torch.randn((1, *shape), generator=gen, dtype=torch.float64)


# -------------------------------------------------------------------------- export
#: ONNX opset of the exports (the torchlib opset: no version conversion pass).
OPSET = 18
_REGISTRY: list = []


def _cached_registry():
    """The torchlib op registry, built once (``torch.onnx.export`` rebuilds it per call: ~1 s)."""
    if not _REGISTRY:
        from torch.onnx._internal.exporter import _registration

        _REGISTRY.append(_registration.ONNXRegistry.from_torchlib(opset_version=OPSET))
    return _REGISTRY[0]


def _export_dynamo(module, x):
    import torch

    program = torch.export.export(module, (x,), strict=False)
    try:  # fast path through the exporter's internals, with a cached registry
        from torch.onnx._internal.exporter import _core

        onnx_program = _core.export(
            program,
            registry=_cached_registry(),
            optimize=True,
            verbose=False,
            opset_version=OPSET,
        )
    except Exception:  # internals changed (or a real failure: the public API re-raises it)
        onnx_program = torch.onnx.export(
            program, dynamo=True, optimize=True, verbose=False, opset_version=OPSET
        )
    return onnx_program.model_proto


def _export_torchscript(module, x):
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            (x,),
            buf,
            dynamo=False,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
            opset_version=OPSET,
        )
    torch_dir = str(Path(torch.__file__).parent)
    for w in caught:  # the tracer baked a value-dependent branch into the graph: refuse
        if issubclass(w.category, torch.jit.TracerWarning) and not str(w.filename).startswith(
            torch_dir
        ):
            raise ModelLoadError(
                f"the forward pass branches on input values at {w.filename}:{w.lineno}, "
                "so a trace would be wrong"
            )
    model = onnx.load_from_string(buf.getvalue())
    try:
        import onnxscript

        model = onnxscript.optimizer.optimize(model)
    except Exception:  # the optimizer is a nicety: keep the unoptimized graph
        pass
    return model


def export_onnx(module, x):
    """Export ``module`` on example ``x`` to an in-memory ONNX model; returns (model, note)."""
    errors = []
    with _quiet():
        if not _is_script(module):
            try:
                return _export_dynamo(module, x), "exported with torch.export -> ONNX (dynamo)"
            except Exception as exc:
                errors.append(f"torch.export: {_one_line(exc, 240)}")
        try:
            return _export_torchscript(module, x), "exported with the TorchScript ONNX exporter"
        except Exception as exc:
            errors.append(f"TorchScript exporter: {_one_line(exc, 240)}")
    raise ModelLoadError("could not convert the module to ONNX: " + "; ".join(errors))


# ----------------------------------------------------------------------- modules
def _prepare(module, state_dict, name: str):
    """Deep copy, load the state dict, float64, eval. Returns (module, sha256, notes)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = copy.deepcopy(module)
    except Exception as exc:
        raise ModelLoadError(f"{name}: cannot copy the module ({_one_line(exc)})") from exc
    notes: list[str] = []
    if state_dict is not None:
        if isinstance(state_dict, (str, Path)):
            path = Path(state_dict)
            if not path.is_file():
                raise ModelLoadError(f"{state_dict}: no such file; check the state_dict path")
            loaded = _torch_load(path, weights_only=True)
            sd, key = _find_state_dict(loaded)
            if sd is None:
                raise ModelLoadError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
            digest = _file_sha256(path)
            notes.append(f"weights from {path}" + (f" (key {key!r})" if key else ""))
        elif isinstance(state_dict, Mapping):
            sd, key = _find_state_dict(state_dict)
            if sd is None:
                raise UsageError("state_dict must map parameter names to tensors")
            digest = state_dict_sha256(sd)
            notes.append("weights from a state dict passed in memory")
        else:
            raise UsageError(
                f"state_dict must be a dict or a path to a .pt/.pth file, got "
                f"{type(state_dict).__name__}"
            )
        _load_state_dict(module, sd, name)
    else:
        digest = state_dict_sha256(module.state_dict())
    with warnings.catch_warnings():  # TorchScript warns about .grad of non-leaf tensors
        warnings.simplefilter("ignore")
        module = module.double().eval()
    if not _is_script(module) and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()
    ):
        notes.append("BatchNorm uses its running statistics (eval mode)")
    return module, digest, notes


def _load_state_dict(module, sd: Mapping, name: str) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}" + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:6]}" + (" ..." if len(unexpected) > 6 else "")
            )
        raise ModelLoadError(
            f"{name}: the state dict does not match the module: "
            + "; ".join(parts)
            + " (is it the right architecture?)"
        )
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else _one_line(exc)
        raise ModelLoadError(f"{name}: the state dict does not match the module: {detail}") from exc


def _run_eagerly(module, x, guessed: bool, name: str):
    import torch

    try:
        with torch.no_grad(), _quiet():
            out = module(x)
    except Exception as exc:
        shape = tuple(x.shape[1:])
        how = "inferred from its first Linear layer" if guessed else "given"
        raise UsageError(
            f"{name}: the module fails on an input of shape {shape} ({how}): "
            f"{_one_line(exc, 200)}; pass input_shape= (without the batch dimension)"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(
            f"{name}: the module returns a {type(out).__name__}; lipverify needs a single "
            "tensor output (wrap it to return one tensor)"
        )


def _network_from_module(
    module,
    *,
    input_shape,
    example_input,
    state_dict,
    keep_softmax,
    name,
    path: str | None,
    digest: str | None,
    fmt: str,
    notes: list[str],
) -> Network:
    import torch

    from .onnx_import import network_from_onnx

    if isinstance(module, torch.export.ExportedProgram):
        program = module
        if input_shape is None and example_input is None:
            input_shape = _shape_from_exported(program)
        batch = _exported_batch(program)
        if batch is not None and batch != 1:
            raise UsageError(
                f"{name}: the exported program was traced with a fixed batch size of {batch}; "
                "re-export it with a batch of 1, e.g. torch.export.export(model, (x[:1],)), "
                "or with a dynamic batch (dynamic_shapes={'x': {0: Dim.DYNAMIC}})"
            )
        module = program.module()
        notes = [*notes, "from a torch.export ExportedProgram"]
    elif not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"cannot load a {type(module).__name__}: pass a file path, a torch.nn.Module, "
            "a torch.export.ExportedProgram or a TorchScript module"
        )
    guessed = False
    if input_shape is None and example_input is None:
        input_shape = _infer_input_shape(module)
        guessed = input_shape is not None
        if input_shape is None:
            raise UsageError(
                f"{name}: cannot infer the input shape (the first layer is not nn.Linear); "
                "pass input_shape= without the batch dimension, e.g. input_shape=(1, 28, 28)"
            )
    x = _example(input_shape, example_input)
    module, sha, more = _prepare(module, state_dict, name)
    digest = digest or sha  # a file's own digest, else the state dict's
    _run_eagerly(module, x, guessed, name)
    model, how = export_onnx(module, x)
    notes = [*notes, *more, f"{how}, float64, input shape {tuple(x.shape[1:])}"]
    provenance = Provenance(path=path, sha256=digest, format=fmt, notes=tuple(notes))
    net = network_from_onnx(model, name=name, provenance=provenance, keep_softmax=keep_softmax)
    shape = tuple(int(s) for s in x.shape[1:])
    if net.input_shape != shape and net.input_dim == math.prod(shape):
        net = replace(net, input_shape=shape)  # the ONNX input carries the batch of 1
    return net


def load_module(
    module,
    *,
    input_shape=None,
    example_input=None,
    state_dict=None,
    keep_softmax: bool = False,
    name: str | None = None,
    **_ignored,
) -> Network:
    """Network of a PyTorch ``nn.Module``, ``ExportedProgram`` or TorchScript module.

    ``input_shape`` excludes the batch dimension (``(784,)``, ``(3, 32, 32)``);
    ``example_input`` includes it. When neither is given and the first layer is
    ``nn.Linear``, the shape is ``(in_features,)``. ``state_dict`` (a dict or a
    .pt/.pth path) is loaded first, strictly. The module itself is not modified:
    a float64 eval-mode copy is exported.
    """
    name = name or _type_name(module)
    return _network_from_module(
        module,
        input_shape=input_shape,
        example_input=example_input,
        state_dict=state_dict,
        keep_softmax=keep_softmax,
        name=name,
        path=None,
        digest=None,
        fmt="torch-module",
        notes=[],
    )


# -------------------------------------------------------------------------- files
def _zip_kind(path: Path) -> str | None:
    """ "torchscript", "pt2", "torch-save" or None (not a zip), read without unpickling."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: corrupt zip archive ({_one_line(exc)})") from exc
    inner = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return "pt2"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    return "torch-save"


def _load_torchscript(path: Path):
    import torch

    try:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load TorchScript archive ({_one_line(exc)})") from exc


def _load_exported(path: Path):
    import torch

    try:
        with _quiet():
            return torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the .pt2 program ({_one_line(exc)})") from exc


def _from_file(obj, path: Path, fmt: str, notes, *, input_shape, keep_softmax) -> Network:
    return _network_from_module(
        obj,
        input_shape=input_shape,
        example_input=None,
        state_dict=None,
        keep_softmax=keep_softmax,
        name=path.stem,
        path=str(path),
        digest=_file_sha256(path),
        fmt=fmt,
        notes=list(notes),
    )


@register_importer(".pt2")
def load_exported_file(path, *, input_shape=None, keep_softmax=False, **_ignored) -> Network:
    """A ``torch.export.save`` archive."""
    path = Path(path)
    program = _load_exported(path)
    return _from_file(
        program, path, "torch-export", [], input_shape=input_shape, keep_softmax=keep_softmax
    )


@register_importer(".pt", ".pth", ".ts")
def load_torch_file(
    path, *, trust_pickle=False, input_shape=None, keep_softmax=False, **_ignored
) -> Network:
    """TorchScript archive, whole pickled model (trusted only), or refuse a bare state dict."""
    import torch

    path = Path(path)
    kind = _zip_kind(path)
    if kind == "torchscript" or (path.suffix.lower() == ".ts" and kind != "pt2"):
        module = _load_torchscript(path)
        return _from_file(
            module, path, "torchscript", [], input_shape=input_shape, keep_softmax=keep_softmax
        )
    if kind == "pt2":
        return _from_file(
            _load_exported(path),
            path,
            "torch-export",
            [],
            input_shape=input_shape,
            keep_softmax=keep_softmax,
        )

    try:
        obj = _torch_load(path, weights_only=True)
    except UntrustedPickleError:
        if not trust_pickle:
            raise
        obj = _torch_load(path, weights_only=False)

    if isinstance(obj, Mapping):
        modules = [v for v in obj.values() if isinstance(v, torch.nn.Module)]
        if len(modules) == 1:  # a checkpoint dict holding the model object
            obj = modules[0]
    if isinstance(obj, torch.nn.Module):
        notes = ["whole pickled model loaded with trust_pickle=True"] if trust_pickle else []
        return _from_file(
            obj, path, "torch-pickle", notes, input_shape=input_shape, keep_softmax=keep_softmax
        )
    sd, key = _find_state_dict(obj)
    if sd is not None:
        where = f" (under key {key!r})" if key else ""
        raise UsageError(
            f"{path}: this file holds only weights (a state dict{where}); pass the "
            f"architecture from Python: lipverify.load(module, state_dict='{path.name}')"
        )
    raise ModelLoadError(
        f"{path}: holds a {type(obj).__name__}, not a model; save a TorchScript module, a "
        "torch.export program (.pt2) or ONNX"
    )
