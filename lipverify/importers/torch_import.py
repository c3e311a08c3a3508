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
only with ``trust_pickle=True``). Files are dispatched on their content, not their
suffix. Nothing is unpickled by default: ``torch.load(weights_only=True)``, and .pt2
archives through :func:`_load_pt2_safely` (torch.export.load unpickles); what needs
more raises :class:`~lipverify.errors.UntrustedPickleError` unless ``trust_pickle=True``.
torch internals are reached only through :mod:`~lipverify.importers.torch_compat`.
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
from . import register_importer, torch_compat

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
            torch_compat.DYNAMO_LOGGER,
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
        if weights_only and ("Unsupported" in message or "GLOBAL" in message):
            # a global or an opcode the safe unpickler refuses: only full unpickling reads it
            found = re.search(r"GLOBAL (\S+)", message)
            what = f" ({found.group(1)[:80]})" if found else " (a general pickle)"
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
        registration = torch_compat.onnx_registration()
        _REGISTRY.append(registration.ONNXRegistry.from_torchlib(opset_version=OPSET))
    return _REGISTRY[0]


def _export_dynamo(module, x):
    import torch

    program = torch.export.export(module, (x,), strict=False)
    try:  # fast path through the exporter's internals, with a cached registry
        onnx_program = torch_compat.onnx_exporter_core().export(
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
def _prepare(module, state_dict, name: str, trust_pickle: bool = False):
    """Deep copy, load the state dict, float64, eval. Returns (module, sha256, notes).

    A state dict file is read with the safe (weights_only) unpickler; one that pickles
    Python objects needs ``trust_pickle=True``."""
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
            try:
                loaded = _torch_load(path, weights_only=True)
            except UntrustedPickleError:
                if not trust_pickle:
                    raise
                loaded = _torch_load(path, weights_only=False)
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
    trust_pickle: bool = False,
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
    module, sha, more = _prepare(module, state_dict, name, trust_pickle)
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
    trust_pickle: bool = False,
    **_ignored,
) -> Network:
    """Network of a PyTorch ``nn.Module``, ``ExportedProgram`` or TorchScript module.

    ``input_shape`` excludes the batch dimension (``(784,)``, ``(3, 32, 32)``);
    ``example_input`` includes it. When neither is given and the first layer is
    ``nn.Linear``, the shape is ``(in_features,)``. ``state_dict`` (a dict or a
    .pt/.pth path) is loaded first, strictly; a file through the safe unpickler
    (``trust_pickle=True`` for one that pickles Python objects). The module itself is
    not modified: a float64 eval-mode copy is exported.
    """
    from ..options import parse_bool

    trust_pickle = parse_bool(trust_pickle, "trust_pickle")
    keep_softmax = parse_bool(keep_softmax, "keep_softmax")
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
        trust_pickle=trust_pickle,
    )


# -------------------------------------------------------------------------- files
def _zip_kind(path: Path) -> str | None:
    """ "torchscript", "pt2", "pt2-legacy", "torch-save" or None (not a zip), read without
    unpickling."""
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
    if "serialized_exported_program.json" in names:
        return "pt2-legacy"  # torch <= 2.7 layout
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    return "torch-save"


def _load_torchscript(path: Path):
    import torch

    try:
        with _quiet():
            with open(path, "rb") as fh:  # any file name (torch's C++ takes no surrogates)
                return torch.jit.load(fh, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load TorchScript archive ({_one_line(exc)})") from exc


def _untrusted(path: Path, what: str) -> UntrustedPickleError:
    """The refusal of a file part that only unpickling (or running its code) could read."""
    return UntrustedPickleError(
        f"{path}: {what}; loading it could run arbitrary code. Pass trust_pickle=True "
        "(CLI --trust-pickle) only if the file comes from a trusted source"
    )


# ------------------------------------------------------------ .pt2 without unpickling
# torch.export.load is not safe on untrusted files (torch 2.13): it unpickles weights and
# constants saved with ``use_pickle`` (weights_only=False), custom and opaque objects, and
# retries the sample inputs / legacy state dicts with weights_only=False when the safe
# unpickler refuses them; it feeds the program's symbolic expressions to sympy.sympify (an
# eval), and ExportedProgram.module() exec's the archive's guard code and generates Python
# from its node names and argument names. There is no weights_only switch. So an archive is
# read here: tensors through torch.load(weights_only=True) or as raw storage, and the
# program JSON is checked field by field before torch's deserializer sees it. Anything that
# would need more is refused unless trust_pickle=True (then torch.export.load reads it).

#: Names, targets, module paths, devices, versions: no quote, bracket, space or newline, so
#: nothing can break out of the Python that FX generates from them.
_NAME_TEXT = re.compile(r"[A-Za-z0-9_.:+\-]*")
#: String arguments of operators (repr'd by FX): printable ASCII.
_ARG_TEXT = re.compile(r"[\x20-\x7e]*")
#: Operators a graph node may call: ATen, prims and higher-order ops (not custom namespaces,
#: not arbitrary torch.* callables such as torch.save or torch.hub.load).
_OP_TARGET = re.compile(
    r"torch\.ops\.(aten|prims|higher_order)\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?"
)
_DENIED_OPS = ("from_file", "_load", "load", "save")  # ATen ops that touch files
_SYM_TARGETS = frozenset(
    [f"_operator.{n}" for n in ("getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos",
                                "mul", "add", "sub", "floordiv", "mod", "pow", "truediv",
                                "and_", "or_", "lshift", "rshift")]
    + [f"math.{n}" for n in ("trunc", "ceil", "floor", "sqrt")]
    + [f"torch.{n}" for n in ("sym_not", "sym_int", "sym_float", "sym_ite", "sym_max",
                              "sym_min", "sym_sqrt", "_sym_sqrt", "sym_sum")]
)
#: Functions a symbolic shape expression may call (sympy's and torch.utils._sympy's).
_SYM_FUNCS = frozenset(
    "Symbol Integer Float Rational Add Mul Pow Max Min Abs Mod floor ceiling Eq Ne Lt Le Gt "
    "Ge StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not "
    "Piecewise ITE FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt "
    "CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal "
    "ToFloat Identity OpaqueUnaryFn_sqrt".split()
)
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MAX_JSON_DEPTH = 200


def _check_sym_expr(text: str) -> str | None:
    """Why ``text`` is not a plain symbolic shape expression (None: it is).

    sympy.sympify evaluates its string argument as Python, so only calls of known sympy
    functions on symbol names, numbers and arithmetic are let through.
    """
    import ast

    if len(text) > 4000:
        return "is too long for a shape expression"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "is not a shape expression"
    allowed = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword,
               ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Add, ast.Sub, ast.Mult,
               ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.Eq,
               ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or, ast.BitAnd,
               ast.BitOr)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return f"contains Python code ({type(node).__name__})"
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in _SYM_FUNCS
        ):
            return "calls a function that is not a sympy shape function"
        if isinstance(node, ast.Name) and not _IDENT.fullmatch(node.id):
            return f"names {node.id[:40]!r}"
        if isinstance(node, ast.keyword) and not (node.arg and _IDENT.fullmatch(node.arg)
                                                  and isinstance(node.value, ast.Constant)):
            return "has a keyword argument that is not a plain flag"
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and not _IDENT.fullmatch(v):
                return "holds a string that is not a symbol name"
            if not isinstance(v, (str, int, float, bool, type(None))):
                return "holds a constant that is not a number"
            if isinstance(v, int) and abs(v) > 2**63:
                return "holds an integer out of range"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right.operand if isinstance(node.right, ast.UnaryOp) else node.right
            if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int)
                    and abs(exp.value) <= 64):
                return "raises to a power that is not a small integer"
    return None


def _check_spec(text: str, depth: int = 0) -> bool:
    """A pytree spec (JSON whose strings are names or nested JSON): safe to hand to torch."""
    import json

    if depth > 8:
        return False
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return bool(_NAME_TEXT.fullmatch(text))
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and not (_NAME_TEXT.fullmatch(v) or (
                v[:1] in "[{\"" and _check_spec(v, depth + 1))):
            return False
    return True


def _clean_program_json(data, path: Path, member: str) -> tuple[object, int]:
    """Check the program JSON of a .pt2 archive; drop node metadata (stack traces, free
    text) and the guard code (Python). Returns the cleaned JSON and the guards dropped."""
    dropped = 0

    def refuse(where: str, why: str):
        return _untrusted(path, f"{member} field {where or '(top)'} {why}")

    def walk(value, where: str, depth: int):
        nonlocal dropped
        if depth > _MAX_JSON_DEPTH:
            raise refuse(where, "is nested too deeply")
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not _NAME_TEXT.fullmatch(key):
                    raise refuse(where, f"has a key {key[:40]!r} that is not a plain name")
                here = f"{where}.{key}" if where else key
                if key == "metadata" and isinstance(item, dict):
                    out[key] = {}  # stack traces, module paths: free text we do not need
                elif key == "guards_code" and isinstance(item, list):
                    dropped += len(item)  # Python source: exec'd by ExportedProgram.module()
                    out[key] = []
                elif key == "expr_str" and isinstance(item, str):
                    why = _check_sym_expr(item)
                    if why:
                        raise refuse(here, f"(a shape expression eval'd by sympy) {why}")
                    out[key] = item
                elif key in ("in_spec", "out_spec") and isinstance(item, str):
                    if not _check_spec(item):
                        raise refuse(here, "is not a plain pytree spec")
                    out[key] = item
                elif key in ("target", "as_operator") and isinstance(item, str):
                    op = item.rsplit(".", 2)
                    if not (item in _SYM_TARGETS or (
                            _OP_TARGET.fullmatch(item) and op[-2] not in _DENIED_OPS
                            and op[-1] not in _DENIED_OPS)):
                        raise refuse(here, f"calls {item[:60]!r}, not an ATen/prims operator")
                    out[key] = item
                elif key in ("as_string", "as_strings"):
                    items = item if isinstance(item, list) else [item]
                    if not all(isinstance(t, str) and _ARG_TEXT.fullmatch(t) for t in items):
                        raise refuse(here, "holds a string argument with control characters")
                    out[key] = item
                else:
                    out[key] = walk(item, here, depth + 1)
            return out
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, str) and not _NAME_TEXT.fullmatch(value):
            raise refuse(where, f"holds {value[:40]!r}, not a plain name")
        return value

    return walk(data, "", 0), dropped


def _read_json(reader, name: str, path: Path):
    import json

    try:
        raw = reader.read_bytes(name)
    except Exception as exc:
        raise ModelLoadError(f"{path}: the .pt2 archive has no {name} ({_one_line(exc)})") from exc
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: {name} is not valid JSON ({_one_line(exc)})") from exc


def _weights_only_bytes(data: bytes, path: Path, member: str):
    """A torch.save payload inside an archive, through the safe (weights_only) unpickler."""
    import pickle

    import torch

    try:
        with _quiet():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)[:80]})" if found else ""
        raise _untrusted(path, f"{member} pickles Python objects{what}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: {member} is corrupt ({_one_line(exc)})") from exc


def _payload(reader, names, path: Path, model: str, kind: str, serde):
    """Weights (``kind="weights"``) or constants of ``model`` as tensors, never unpickled."""
    import torch

    base = serde.C.WEIGHTS_DIR if kind == "weights" else serde.C.CONSTANTS_DIR
    legacy = f"{base}{model}.pt"
    if legacy in names:  # an older layout: one torch.save file
        loaded = _weights_only_bytes(reader.read_bytes(legacy), path, legacy)
        if not isinstance(loaded, dict):
            raise ModelLoadError(f"{path}: {legacy} holds a {type(loaded).__name__}, not a dict")
        return loaded
    fmt = (serde.C.WEIGHTS_CONFIG_FILENAME_FORMAT if kind == "weights"
           else serde.C.CONSTANTS_CONFIG_FILENAME_FORMAT)
    member = fmt.format(model)
    raw, _ = _clean_program_json(_read_json(reader, member, path), path, member)
    config = serde.to_dataclass(serde.schema.PayloadConfig, raw)
    tensor_prefix = serde.C.TENSOR_CONSTANT_FILENAME_PREFIX
    for fqn, meta in config.config.items():
        tensor_file = meta.path_name.startswith(tensor_prefix) or kind == "weights"
        if meta.use_pickle or not tensor_file:
            raise _untrusted(path, f"{member} entry {fqn} ({meta.path_name}) is a pickled object")
    files = serde.build_file_map(reader, config, base)
    out = {}
    for fqn, meta in config.config.items():
        tm = meta.tensor_meta
        if tm is None or meta.path_name not in files:
            raise ModelLoadError(f"{path}: {member} entry {fqn}: no tensor data")
        tensor = torch.as_strided(
            files[meta.path_name],
            size=serde.size(tm.sizes),
            stride=serde.stride(tm.strides),
            storage_offset=serde.offset(tm.storage_offset),
        )
        if kind == "weights" and meta.is_param:
            tensor = torch.nn.Parameter(tensor, requires_grad=tm.requires_grad)
        out[fqn] = tensor
    return out


def _load_pt2_safely(path: Path):
    """The ExportedProgram "model" of a .pt2 archive, read without unpickling or eval.

    Returns ``(program, notes)``; raises :class:`UntrustedPickleError` for any part that
    only unpickling or running the archive's code could read, and when this torch lacks the
    pieces (:func:`~lipverify.importers.torch_compat.export_serde`).
    """
    try:
        serde = torch_compat.export_serde()
    except ModelLoadError as exc:  # torch internals moved: no safe reader
        raise _untrusted(path, "this torch offers no way to read a .pt2 archive without "
                         f"unpickling ({_one_line(exc, 240)})") from exc
    with open(path, "rb") as fh:  # a file object: torch takes no str it cannot encode
        return _read_pt2(path, fh, serde)


def _read_pt2(path: Path, fh, serde):
    C = serde.C
    try:
        reader = serde.Reader(fh)
        version = reader.read_string(C.ARCHIVE_VERSION_PATH)
        names = set(reader.get_file_names())
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable .pt2 archive ({_one_line(exc)})") from exc
    if version.strip() != C.ARCHIVE_VERSION_VALUE:
        raise ModelLoadError(
            f"{path}: .pt2 archive_version {version[:20]!r}; this torch reads version "
            f"{C.ARCHIVE_VERSION_VALUE} (re-save it with this torch's torch.export.save)"
        )
    model = "model"
    member = C.MODELS_FILENAME_FORMAT.format(model)
    if member not in names:
        raise ModelLoadError(f"{path}: the .pt2 archive holds no program {member}")
    try:
        data, dropped = _clean_program_json(_read_json(reader, member, path), path, member)
        inputs = C.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        example = (_weights_only_bytes(reader.read_bytes(inputs), path, inputs)
                   if inputs in names else None)
        if example is not None and not isinstance(example, tuple):
            raise ModelLoadError(f"{path}: {inputs} holds a {type(example).__name__}, not a tuple")
        state_dict = _payload(reader, names, path, model, "weights", serde)
        constants = _payload(reader, names, path, model, "constants", serde)
        serialized = serde.to_dataclass(serde.schema.ExportedProgram, data)
        with _quiet():
            program = serde.Deserializer(None).deserialize(
                serialized, state_dict, constants, example
            )
    except (ModelLoadError, UsageError):
        raise
    except Exception as exc:  # malformed JSON fields, bad shapes: torch raises many types
        raise ModelLoadError(f"{path}: cannot load the .pt2 program ({_one_line(exc)})") from exc
    notes = ["read without unpickling (checked program JSON, tensors as raw storage)"]
    if dropped:
        notes.append(f"{dropped} runtime input guard(s) of the archive not loaded (Python code)")
    return program, notes


def _load_exported(path: Path, trust_pickle: bool = False, legacy: bool = False):
    """``(program, notes)`` of a .pt2 archive: the safe reader, or with ``trust_pickle``
    torch.export.load for archives the safe reader refuses (and for the old layout)."""
    import torch

    try:
        if legacy:
            raise _untrusted(path, "an old (torch <= 2.7) .pt2 layout, which only "
                             "torch.export.load reads, and it unpickles its parts")
        return _load_pt2_safely(path)
    except UntrustedPickleError:  # also when torch internals moved: no safe reader
        if not trust_pickle:
            raise
    try:
        with _quiet():
            with open(path, "rb") as fh:
                program = torch.export.load(fh)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the .pt2 program ({_one_line(exc)})") from exc
    return program, ["loaded with torch.export.load (trust_pickle=True)"]


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


def _load_torch_path(path: Path, trust_pickle, input_shape, keep_softmax) -> Network:
    """Any PyTorch file, dispatched on its content (not its suffix: a renamed file gets the
    same checks): .pt2 archive, TorchScript archive, or a torch.save pickle."""
    import torch

    from ..options import parse_bool

    trust_pickle = parse_bool(trust_pickle, "trust_pickle")
    keep_softmax = parse_bool(keep_softmax, "keep_softmax")
    path = Path(path)
    kind = _zip_kind(path)
    if kind in ("pt2", "pt2-legacy"):
        program, notes = _load_exported(path, trust_pickle, legacy=kind == "pt2-legacy")
        return _from_file(
            program, path, "torch-export", notes, input_shape=input_shape,
            keep_softmax=keep_softmax,
        )
    if kind == "torchscript" or path.suffix.lower() == ".ts":
        module = _load_torchscript(path)  # torch's C++ loader: no Python unpickling
        return _from_file(
            module, path, "torchscript", [], input_shape=input_shape, keep_softmax=keep_softmax
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


@register_importer(".pt2")
def load_exported_file(
    path, *, trust_pickle=False, input_shape=None, keep_softmax=False, **_ignored
) -> Network:
    """A ``torch.export.save`` archive, read without unpickling (see :func:`_load_pt2_safely`);
    archives with pickled parts need ``trust_pickle=True``. A file that is really a
    TorchScript archive or a torch.save pickle is loaded as such, with the same checks."""
    return _load_torch_path(path, trust_pickle, input_shape, keep_softmax)


@register_importer(".pt", ".pth", ".ts")
def load_torch_file(
    path, *, trust_pickle=False, input_shape=None, keep_softmax=False, **_ignored
) -> Network:
    """TorchScript archive, .pt2 archive, whole pickled model (trusted only), or refuse a bare
    state dict."""
    return _load_torch_path(path, trust_pickle, input_shape, keep_softmax)
