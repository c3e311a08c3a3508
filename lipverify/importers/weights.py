"""Importers for bare weight files: ``.npz``, ``.mat`` (LipSDP, GLipSDP) and ``.nnet``.

These files store matrices but not the graph, so a few facts are inferred and
written into the network's provenance notes:

* orientation (``[out, in]`` or ``[in, out]``) from shape chaining, and from
  bias lengths; when both orientations fit, :class:`AmbiguousLayoutError` asks
  for ``layout="out-in" | "in-out"``;
* the hidden activation is the ``activation`` option (default ``"relu"``;
  parameters after a colon, e.g. ``"leaky_relu:0.01"``); the output is linear.

Every failure to read or make sense of a file is a one-line :class:`ModelLoadError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import (
    AmbiguousLayoutError,
    LipverifyError,
    ModelLoadError,
    UntrustedPickleError,
    UsageError,
)
from ..ir.activations import Activation, SlopeRestricted
from ..ir.linear import Conv2d, LinearOp
from ..ir.network import Network, Provenance
from . import register_importer

LAYOUTS = ("out-in", "in-out")


# --------------------------------------------------------------------------- helpers
@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any parser exception into a one-line :class:`ModelLoadError`.

    The third-party readers (zipfile, numpy, scipy) raise many unrelated types on a
    corrupt file (ValueError, OSError, zlib.error, MatReadError, ...); catching
    ``Exception`` here is deliberate and limited to the parsing step.
    """
    try:
        yield
    except LipverifyError:
        raise
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file; check the path") from None
    except Exception as exc:  # noqa: BLE001 - see docstring
        msg = (str(exc).strip().splitlines() or [""])[0]
        if "allow_pickle" in msg:  # numpy takes any file that is not zip nor .npy for a pickle
            if _looks_pickled(path):
                raise _untrusted_npz(path, "the file is a pickle, not an .npz archive") from None
            raise ModelLoadError(
                f"{path}: cannot read {what}: not a zip archive; the file is corrupt, truncated "
                "or not in this format"
            ) from None
        raise ModelLoadError(
            f"{path}: cannot read {what} ({type(exc).__name__}: {msg}); "
            "the file is corrupt, truncated or not in this format"
        ) from exc


def _looks_pickled(path: Path) -> bool:
    """A pickle of protocol 2 or later (every pickle Python 3 writes by default)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _untrusted_npz(path: Path, what: str) -> UntrustedPickleError:
    return UntrustedPickleError(
        f"{path}: {what}; unpickling it could run arbitrary code. Save plain numeric arrays "
        "(np.savez(file, w1=W1, b1=b1, ...)), or pass trust_pickle=True (CLI --trust-pickle) "
        "only if the file comes from a trusted source"
    )


def _numeric_object_array(arr: np.ndarray) -> np.ndarray:
    """A trusted object array holding numbers (or one array) as a numeric array, if it can be."""
    value = arr.item() if arr.shape == () else arr.tolist()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return arr  # _as_matrix reports "holds object data, not numbers"


def parse_activation(spec: str | Activation) -> Activation:
    """``"relu"``, ``"tanh"``, ``"leaky_relu:0.01"`` -> :class:`SlopeRestricted`.

    >>> parse_activation("leaky_relu:0.01").describe()
    'leaky_relu(0.01) slope [0.01, 1]'
    """
    if isinstance(spec, Activation):
        return spec
    name, _, args = str(spec).strip().partition(":")
    try:
        params = [float(a) for a in args.split(",") if a.strip()]
    except ValueError:
        raise UsageError(
            f"bad activation {spec!r}: write name[:p1,p2], e.g. 'leaky_relu:0.01'"
        ) from None
    return SlopeRestricted.named(name.strip().lower().replace("-", "_"), *params)


def _check_layout(layout: str | None) -> str | None:
    if layout is None:
        return None
    norm = str(layout).strip().lower().replace("_", "-")
    if norm not in LAYOUTS:
        raise UsageError(f"layout must be 'out-in' or 'in-out', got {layout!r}")
    return norm


def _shapes(names: list[str], mats: list[np.ndarray]) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, m.shape))}" for n, m in zip(names, mats, strict=True))


def _orient(
    where: Path,
    names: list[str],
    mats: list[np.ndarray],
    biases: list[np.ndarray | None],
    layout: str | None,
    n_in: int | None = None,
    prefer: str | None = None,
) -> tuple[list[np.ndarray], str]:
    """Return the matrices as ``[out, in]`` and a provenance note on how that was decided.

    An orientation fits when consecutive matrices chain (``in`` of one equals
    ``out`` of the previous, and the first ``in`` equals ``n_in`` when known) and
    every bias has the ``out`` length. ``prefer`` (a format's documented
    convention) settles a tie; otherwise a tie is an :class:`AmbiguousLayoutError`.
    """
    for name, m in zip(names, mats, strict=True):
        if m.ndim != 2:
            raise ModelLoadError(f"{where}: {name} has shape {m.shape}; expected a 2-D matrix")

    def fits(ms: list[np.ndarray]) -> bool:
        prev = n_in
        for m, b in zip(ms, biases, strict=True):
            if (prev is not None and m.shape[1] != prev) or (
                b is not None and b.size != m.shape[0]
            ):
                return False
            prev = m.shape[0]
        return True

    options = {"out-in": mats, "in-out": [m.T for m in mats]}
    layout = _check_layout(layout)
    if layout is not None:
        if not fits(options[layout]):
            raise ModelLoadError(
                f"{where}: with layout={layout} the weights do not chain: {_shapes(names, mats)}"
            )
        return options[layout], f"weights stored [{layout.replace('-', ',')}] (layout option)"
    ok = [name for name, ms in options.items() if fits(ms)]
    how = "inferred from shape chaining"
    if len(ok) == 2 and prefer is not None:
        ok, how = [prefer], "format convention"
    if len(ok) == 2:
        raise AmbiguousLayoutError(
            f"{where}: cannot tell whether the weights ({_shapes(names, mats)}) are stored "
            "[out,in] or [in,out]: both chain; pass --layout out-in|in-out "
            "(layout='out-in'|'in-out')"
        )
    if not ok:
        pairs = zip(names, biases, strict=True)
        bias_txt = [f"{n}: bias {b.size}" for n, b in pairs if b is not None]
        extra = f" ({'; '.join(bias_txt)})" if bias_txt else ""
        start = f" from input width {n_in}" if n_in is not None else ""
        raise ModelLoadError(
            f"{where}: weights {_shapes(names, mats)}{extra} do not chain{start} as [out,in] "
            "nor as [in,out]; a layer is missing or the file is not a feed-forward net"
        )
    return options[ok[0]], f"weights stored [{ok[0].replace('-', ',')}] ({how})"


def _zeros_for_missing(weights: list[np.ndarray], biases: list) -> list[np.ndarray]:
    return [np.zeros(w.shape[0]) if b is None else b for w, b in zip(weights, biases, strict=True)]


def _as_matrix(where: Path, name: str, arr) -> np.ndarray:
    """``arr`` as float64 (exact for the float32 most files hold), rejecting non-numbers."""
    arr = np.asarray(arr)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ModelLoadError(f"{where}: {name} holds {arr.dtype} data, not numbers")
    if np.iscomplexobj(arr):
        raise ModelLoadError(f"{where}: {name} holds complex numbers")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():  # NaN/Inf stored, or a float128 beyond float64's range
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise ModelLoadError(f"{where}: {name} holds NaN/Inf values ({nan} NaN, {inf} infinite "
                             "or beyond float64); fix or re-export the weights")
    return arr


def _as_bias(where: Path, name: str, arr) -> np.ndarray:
    return _as_matrix(where, name, arr).ravel()


def _mlp(
    path: Path,
    fmt: str,
    names: list[str],
    mats: list[np.ndarray],
    biases: list[np.ndarray | None],
    layout: str | None,
    activation,
    notes: list[str],
    prefer: str | None = None,
) -> Network:
    """Build a dense feed-forward net from matrices in unknown orientation."""
    oriented, how = _orient(path, names, mats, biases, layout, prefer=prefer)
    act = parse_activation(activation)
    notes = [how, f"hidden activation {act.describe()} (not stored in the file)", *notes]
    full_biases = _zeros_for_missing(oriented, biases)
    missing = [n for n, b in zip(names, biases, strict=True) if b is None]
    if missing:
        which = "the file" if len(missing) == len(names) else ", ".join(missing)
        notes.append(f"no biases for {which} (taken as 0)")
    return Network.sequential(
        oriented,
        [act] * (len(oriented) - 1),
        full_biases,
        provenance=Provenance.of_file(path, fmt, notes),
        name=path.stem,
    )


# Numbered-array conventions: "w1"/"W_0"/"weight1"/"weights_2" with "b1"/"bias1"...,
# and "<stem><k>.weight" / "<stem>_<k>_bias" / "layers.0.weight" (PyTorch-like).
_SHORT_KEY = re.compile(r"^(?P<kind>w|weights?|b|bias(?:es)?)_?(?P<idx>\d+)$", re.IGNORECASE)
_STEM_KEY = re.compile(r"^(?P<stem>[a-z]*)[._]?(?P<idx>\d+)[._](?P<kind>weight|bias)$", re.I)


def _numbered_arrays(where: Path, keys: list[str]) -> tuple[list[str], list[str | None], list[str]]:
    """Weight keys in layer order, matching bias keys (or None), and unrecognised keys."""
    found: dict[str, dict[int, dict[str, str]]] = {}
    ignored = []
    for key in keys:
        m = _SHORT_KEY.match(key) or _STEM_KEY.match(key)
        if not m:
            ignored.append(key)
            continue
        stem = m.groupdict().get("stem", "").lower()
        kind = "w" if m["kind"].lower().startswith("w") else "b"
        found.setdefault(stem, {}).setdefault(int(m["idx"]), {})[kind] = key
    if len(found) > 1:
        raise ModelLoadError(
            f"{where}: numbered arrays with several prefixes ({', '.join(sorted(found))}): "
            "cannot tell the layer order; export as w1..wk, b1..bk"
        )
    layers = next(iter(found.values()), {})
    orphans = [d["b"] for d in layers.values() if "w" not in d]
    if orphans:
        raise ModelLoadError(f"{where}: bias {orphans[0]} has no matching weight array")
    order = sorted(layers)
    return [layers[i]["w"] for i in order], [layers[i].get("b") for i in order], ignored


# --------------------------------------------------------------------------------- .npz
@register_importer(".npz")
def load_npz(
    path, *, layout=None, activation="relu", trust_pickle=False, **_ignored
) -> Network:
    """NumPy archive of weights ``w1..wk`` (optional biases ``b1..bk``), one dense layer each.

    Also accepted: ``W0..``, ``weight_1..``, ``fc1.weight``/``0.weight`` style keys.
    The storage orientation is inferred (see :func:`_orient`); ``layout`` forces it.
    Object arrays are pickles: refused (:class:`UntrustedPickleError`) unless
    ``trust_pickle=True``.
    """
    from ..options import parse_bool

    trust = parse_bool(trust_pickle, "trust_pickle")
    path = Path(path)
    arrays = {}
    with _reading(path, "the .npz archive"):
        data = np.load(path, allow_pickle=trust)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ModelLoadError(f"{path}: holds a {type(data).__name__}, not an .npz archive")
        with data:
            for key in data.files:
                try:
                    arrays[key] = np.array(data[key])
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise _untrusted_npz(
                            path, f"array {key[:60]!r} is an object array (a pickle)"
                        ) from None
                    raise
                if arrays[key].dtype == object:
                    arrays[key] = _numeric_object_array(arrays[key])
    wkeys, bkeys, ignored = _numbered_arrays(path, list(arrays))
    if not wkeys:
        raise ModelLoadError(
            f"{path}: no weights found; expected arrays w1..wk (optional b1..bk), "
            f"found keys {sorted(arrays) or 'none'}"
        )
    mats = [_as_matrix(path, k, arrays[k]) for k in wkeys]
    biases = [None if k is None else _as_bias(path, k, arrays[k]) for k in bkeys]
    notes = [f"ignored arrays: {', '.join(ignored)}"] if ignored else []
    return _mlp(path, "npz", wkeys, mats, biases, layout, activation, notes)


# --------------------------------------------------------------------------------- .mat
def _read_mat(path: Path) -> dict:
    """Variables of a .mat file (``scipy.io.loadmat``; h5py for MATLAB v7.3 files)."""
    from scipy.io import loadmat

    try:
        with _reading(path, "the .mat file"):
            return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except ModelLoadError as exc:
        if not isinstance(exc.__cause__, NotImplementedError):  # scipy's answer to v7.3
            raise
    try:
        import h5py
    except ImportError:
        raise ModelLoadError(
            f"{path}: MATLAB v7.3 (HDF5) file and h5py is not installed; re-save it in MATLAB "
            "with save(file, ..., '-v7') or install h5py"
        ) from None
    with _reading(path, "the MATLAB v7.3 (HDF5) file"):
        return _read_mat_v73(h5py, path)


def _read_mat_v73(h5py, path: Path) -> dict:
    """Numeric arrays and cell arrays of numeric arrays from a v7.3 file (HDF5)."""
    out = {}
    with h5py.File(path, "r") as f:
        for key, item in f.items():
            if key.startswith("#") or not isinstance(item, h5py.Dataset):
                continue
            if item.dtype == h5py.ref_dtype:  # a cell array: references to datasets
                cells = np.empty(item.shape, dtype=object)
                for idx in np.ndindex(item.shape):
                    cells[idx] = np.array(f[item[idx]]).T  # HDF5 stores MATLAB's transpose
                out[key] = cells.T
            else:
                out[key] = np.array(item).T
    return out


_GLIP_KEY = re.compile(r"^(?P<kind>conv|fc)(?P<idx>\d+)_(?P<what>weight|bias)$")
_GLIP_DATA = ("input_mean", "input_scale")


@register_importer(".mat")
def load_mat(path, *, layout=None, activation="relu", input_shape=None, **_ignored) -> Network:
    """MATLAB weights: a LipSDP cell ``weights`` or GLipSDP ``conv*``/``fc*`` arrays.

    * LipSDP: cell ``weights`` of matrices (optional cell ``biases``), orientation inferred.
    * GLipSDP: ``conv<k>_weight`` ``[kh,kw,cin,cout]``, ``fc<k>_weight`` ``[in,out]``,
      ``*_bias``; convs first (stride 1, "same" padding), then dense layers.
      ``input_mean``/``input_scale`` describe the data standardisation and are not
      part of the network. ``input_shape`` (``(C, H, W)``) overrides the inferred one.
    * otherwise numbered arrays ``W1..Wk`` (``b1..bk``) as in :func:`load_npz`.
    """
    path = Path(path)
    data = _read_mat(path)
    if "weights" in data:
        return _load_lipsdp(path, data, layout, activation)
    if any(_GLIP_KEY.match(k) for k in data):
        return _load_glipsdp(path, data, layout, activation, input_shape)
    wkeys, bkeys, ignored = _numbered_arrays(path, list(data))
    if not wkeys:
        raise ModelLoadError(
            f"{path}: no weights found; expected a cell 'weights' (LipSDP) or fc*/conv* arrays "
            f"(GLipSDP) or numbered arrays W1..Wk; found {sorted(data) or 'no variables'}"
        )
    mats = [_as_matrix(path, k, data[k]) for k in wkeys]
    biases = [None if k is None else _as_bias(path, k, data[k]) for k in bkeys]
    notes = [f"ignored variables: {', '.join(ignored)}"] if ignored else []
    return _mlp(path, "mat", wkeys, mats, biases, layout, activation, notes)


def _cells(value) -> list:
    """Entries of a MATLAB cell array (a plain matrix counts as one entry)."""
    value = np.asarray(value)
    return list(value.ravel(order="F")) if value.dtype == object else [value]


def _load_lipsdp(path: Path, data: dict, layout, activation) -> Network:
    cells = _cells(data["weights"])
    names = [f"weights{{{k}}}" for k in range(1, len(cells) + 1)]
    mats = [_as_matrix(path, n, c) for n, c in zip(names, cells, strict=True)]
    biases: list[np.ndarray | None] = [None] * len(mats)
    if "biases" in data:
        bcells = _cells(data["biases"])
        if len(bcells) != len(mats):
            raise ModelLoadError(f"{path}: {len(mats)} weights but {len(bcells)} biases")
        biases = [_as_bias(path, f"biases{{{k}}}", c) for k, c in enumerate(bcells, start=1)]
    return _mlp(path, "mat-lipsdp", names, mats, biases, layout, activation, [])


def _load_glipsdp(path: Path, data: dict, layout, activation, input_shape) -> Network:
    """GLipSDP export: ``Conv2d -> act -> ... -> Flatten -> Linear -> act -> ... -> Linear``."""
    layers: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for key, value in data.items():
        m = _GLIP_KEY.match(key)
        if m:  # convs (0) come before dense layers (1), each in index order
            slot = (0 if m["kind"] == "conv" else 1, int(m["idx"]))
            layers.setdefault(slot, {})[m["what"]] = _as_matrix(path, key, value)
    if any("weight" not in v for v in layers.values()):
        raise ModelLoadError(f"{path}: a conv*/fc* bias has no matching weight")
    convs = [(f"conv{i}_weight", layers[k, i]) for k, i in sorted(layers) if k == 0]
    dense = [(f"fc{i}_weight", layers[k, i]) for k, i in sorted(layers) if k == 1]
    act = parse_activation(activation)
    notes = [f"hidden activation {act.describe()} (not stored in the file)"]
    if any(k in data for k in _GLIP_DATA):
        notes.append(
            "input_mean/input_scale in the file are the data standardisation, NOT part of "
            "the network: the network takes standardised inputs"
        )
    ignored = [k for k in data if not _GLIP_KEY.match(k) and k not in _GLIP_DATA]
    if ignored:
        notes.append(f"ignored variables: {', '.join(ignored)}")
    ops: list[LinearOp | np.ndarray] = []
    biases: list[np.ndarray] = []
    if convs:
        shape = _glipsdp_input_shape(path, data, convs, dense, input_shape)
        ops, biases = _glipsdp_convs(path, convs, shape)
        notes.append(
            f"input shape {shape}; conv kernels stored [kh,kw,cin,cout]; stride 1 and 'same' "
            "padding (k-1)/2 assumed (the file stores neither); flatten is C-order over (C,H,W)"
        )
    if dense:
        names = [n for n, _ in dense]
        mats = [layer["weight"] for _, layer in dense]
        dbias = [layer["bias"].ravel() if "bias" in layer else None for _, layer in dense]
        n_in = ops[-1].n_out if ops else None
        oriented, how = _orient(path, names, mats, dbias, layout, n_in, prefer="in-out")
        notes.insert(0, how.replace("format convention", "GLipSDP exporter convention"))
        ops.extend(oriented)
        biases.extend(_zeros_for_missing(oriented, dbias))
    first = ops[0]
    return Network.sequential(
        ops,
        [act] * (len(ops) - 1),
        biases,
        input_shape=first.in_shape if isinstance(first, Conv2d) else (first.shape[1],),
        provenance=Provenance.of_file(path, "mat-glipsdp", notes),
        name=path.stem,
    )


def _glipsdp_convs(path: Path, convs, shape) -> tuple[list[LinearOp], list[np.ndarray]]:
    """Chain of stride-1 'same'-padded :class:`Conv2d` ops and their per-position biases."""
    ops: list[LinearOp] = []
    biases = []
    for name, layer in convs:
        if layer["weight"].ndim != 4:
            raise ModelLoadError(
                f"{path}: {name} has shape {layer['weight'].shape}; "
                "expected a 4-D kernel [kh,kw,cin,cout]"
            )
        kernel = layer["weight"].transpose(3, 2, 0, 1)  # -> (cout, cin, kh, kw)
        kh, kw = kernel.shape[2:]
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        op = Conv2d(kernel, shape, pads=(ph, pw, kh - 1 - ph, kw - 1 - pw))
        bias = layer["bias"].ravel() if "bias" in layer else np.zeros(op.out_shape[0])
        if bias.size != op.out_shape[0]:
            raise ModelLoadError(
                f"{path}: {name} has {op.out_shape[0]} channels but its bias {bias.size} entries"
            )
        ops.append(op)
        biases.append(np.repeat(bias, math.prod(op.out_shape[1:])))  # C-order (C, H, W)
        shape = op.out_shape
    return ops, biases


def _glipsdp_input_shape(path: Path, data, convs, dense, input_shape) -> tuple[int, int, int]:
    """(C, H, W) of a GLipSDP CNN: the option, else input_mean's size, else the first FC."""
    cin = convs[0][1]["weight"].shape[2]
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or shape[0] != cin:
            raise UsageError(f"input_shape must be (C, H, W) with C={cin}, got {input_shape}")
        return shape  # type: ignore[return-value]
    pixels = None
    if "input_mean" in data and np.size(data["input_mean"]) % cin == 0:
        pixels = np.size(data["input_mean"]) // cin
    elif dense:  # 'same' padding keeps H x W, so the first FC reads cout * H * W values
        cout = convs[-1][1]["weight"].shape[3]
        sizes = [d for d in dense[0][1]["weight"].shape if d % cout == 0]
        pixels = sizes[0] // cout if sizes else None
    side = math.isqrt(pixels) if pixels else 0
    if not side or side * side != pixels:
        raise ModelLoadError(
            f"{path}: cannot infer the (square) input image size; pass input_shape=(C, H, W)"
        )
    return (cin, side, side)


# -------------------------------------------------------------------------------- .nnet
class _Tokens:
    """Comma-separated numbers of a .nnet body, consumed in order, remembering line numbers."""

    def __init__(self, path: Path, lines: list[tuple[int, str]]):
        self.path = path
        self.items: list[tuple[float, int]] = []
        for lineno, line in lines:
            for tok in line.split(","):
                tok = tok.strip()
                if not tok:
                    continue
                try:
                    value = float(tok)
                except ValueError:
                    raise ModelLoadError(
                        f"{path}: line {lineno}: {tok[:30]!r} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise ModelLoadError(
                        f"{path}: line {lineno}: {tok[:30]!r} is not a finite number"
                    )
                self.items.append((value, lineno))
        self.pos = 0
        self.last_line = lines[-1][0] if lines else 0

    def take(self, n: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.items):
            raise ModelLoadError(
                f"{self.path}: file ends at line {self.last_line} while reading {what} "
                f"({n - (len(self.items) - self.pos)} numbers missing); the file is truncated"
            )
        chunk = self.items[self.pos : self.pos + n]
        self.pos += n
        return np.array([v for v, _ in chunk])

    def line(self) -> int:
        return self.items[self.pos][1] if self.pos < len(self.items) else self.last_line


def _ints(path: Path, tok: _Tokens, n: int, what: str) -> list[int]:
    line = tok.line()
    vals = tok.take(n, what)
    if not np.all((vals == np.round(vals)) & (vals > 0)):
        got = ", ".join(f"{v:g}" for v in vals)
        raise ModelLoadError(f"{path}: line {line}: {what} must be positive integers, got {got}")
    return [int(v) for v in vals]


@register_importer(".nnet")
def load_nnet(path, *, layout=None, activation="relu", nnet_normalize=False, **_ignored) -> Network:
    """Reluplex/Marabou ``.nnet`` text file: ReLU hidden layers, linear output.

    By default the network is imported exactly as stored: it reads NORMALISED
    inputs ``(x - mean) / range`` and returns normalised outputs. With
    ``nnet_normalize=True`` both affine maps are folded in, so the network reads
    raw inputs and returns ``y * range_out + mean_out``; the reference input
    clipping to ``[min, max]`` is not (it is not linear) - bound over that box.
    """
    from ..options import parse_bool

    nnet_normalize = parse_bool(nnet_normalize, "nnet_normalize")
    path = Path(path)
    with _reading(path, "the .nnet file"):
        text = path.read_text(encoding="utf-8")
    lines = [(i, s.strip()) for i, s in enumerate(text.splitlines(), start=1)]
    body = [(i, s) for i, s in lines if s and not s.startswith("//")]
    if not body:
        raise ModelLoadError(f"{path}: no data (empty or only // comments); not a .nnet file")
    tok = _Tokens(path, body)
    n_layers, n_in, n_out, _max = _ints(path, tok, 4, "the header (layers, inputs, outputs, max)")
    sizes = _ints(path, tok, n_layers + 1, "the layer sizes")
    if sizes[0] != n_in or sizes[-1] != n_out:
        raise ModelLoadError(
            f"{path}: layer sizes {sizes} disagree with the header ({n_in} inputs, {n_out} outputs)"
        )
    tok.take(1, "the symmetric flag")
    lo, hi = tok.take(n_in, "the input minimums"), tok.take(n_in, "the input maximums")
    means, ranges = tok.take(n_in + 1, "the means"), tok.take(n_in + 1, "the ranges")
    weights, biases = [], []
    for k in range(n_layers):
        rows, cols = sizes[k + 1], sizes[k]
        weights.append(tok.take(rows * cols, f"the weights of layer {k + 1}").reshape(rows, cols))
        biases.append(tok.take(rows, f"the biases of layer {k + 1}"))
    if tok.pos != len(tok.items):
        raise ModelLoadError(
            f"{path}: line {tok.line()}: unexpected data after the last layer; "
            "the layer sizes in the header do not match the file"
        )
    fmt = lambda a: "[" + ", ".join(f"{v:g}" for v in a) + "]"  # noqa: E731
    notes = [
        f"hidden activation {parse_activation(activation).describe()}; linear output",
        f"input box [min, max]: {fmt(lo)} .. {fmt(hi)}",
    ]
    if nnet_normalize:
        if np.any(ranges == 0):
            raise ModelLoadError(f"{path}: a normalisation range is 0; cannot fold it")
        weights[0] = weights[0] / ranges[:n_in]
        biases[0] = biases[0] - weights[0] @ means[:n_in]
        weights[-1] = weights[-1] * ranges[-1]
        biases[-1] = biases[-1] * ranges[-1] + means[-1]
        notes.append(
            f"normalisation folded in: inputs (x - {fmt(means[:n_in])}) / {fmt(ranges[:n_in])}, "
            f"outputs y * {ranges[-1]:g} + {means[-1]:g}; input clipping to [min, max] NOT "
            "modelled"
        )
    else:
        notes.append(
            f"imported as stored: reads normalised inputs (x - {fmt(means[:n_in])}) / "
            f"{fmt(ranges[:n_in])} and returns normalised outputs (true y = out * "
            f"{ranges[-1]:g} + {means[-1]:g}); pass nnet_normalize=True to fold both in"
        )
    act = parse_activation(activation)
    return Network.sequential(
        weights,
        [act] * (n_layers - 1),
        biases,
        provenance=Provenance.of_file(path, "nnet", notes),
        name=path.stem,
    )
