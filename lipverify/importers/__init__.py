"""Importer registry: file suffix -> loader returning a :class:`~lipverify.ir.network.Network`.

Loaders take ``(path, **options)``; options they do not understand are ignored.
Common options: ``layout`` ("out-in" | "in-out"), ``activation`` (name of the
hidden activation for weight files that do not store one, default "relu"),
``trust_pickle`` (allow unpickling: whole-model ``.pt`` files, ``.pt2`` archives with
pickled or code-carrying parts, ``.npz`` object arrays; off by default), ``keep_softmax``.
Boolean options are parsed strictly (:func:`~lipverify.options.parse_bool`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import LipverifyError, ModelLoadError, UsageError, check_unique
from ..ir.network import Network
from ..options import LoadOptions
from ..runtime.files import check_regular, shown

Loader = Callable[..., Network]
#: The largest model file :func:`load` opens (bytes); a larger one is refused before reading.
MAX_MODEL_BYTES = 4 * 2**30
IMPORTERS: dict[str, Loader] = {}


def register_importer(*suffixes: str):
    def deco(fn: Loader) -> Loader:
        for s in suffixes:
            check_unique("importers", s.lower(), IMPORTERS.get(s.lower()), fn)
            IMPORTERS[s.lower()] = fn
        return fn

    return deco


def _load_builtin() -> None:
    from . import onnx_import, torch_import, weights  # noqa: F401  (registration)


def supported_suffixes() -> list[str]:
    _load_builtin()
    return sorted(IMPORTERS)


def load(source, **options) -> Network:
    """Load a network from a path, an ``nn.Module``, or return a Network unchanged.

    >>> import lipverify
    >>> lipverify.load("does-not-exist.onnx")
    Traceback (most recent call last):
    ...
    lipverify.errors.ModelLoadError: does-not-exist.onnx: no such file; check the path
    """
    checked = LoadOptions.from_dict(options)  # unknown keys and bad values: UsageError
    # the loaders get the checked values: booleans parsed strictly ("no" is False)
    options = {k: getattr(checked, k) for k in options}
    if isinstance(source, Network):
        return source
    _load_builtin()
    if not isinstance(source, (str, Path)):
        from .torch_import import load_module

        return load_module(source, **options)
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{shown(source)}: no such file; check the path")
    if path.is_dir():
        raise ModelLoadError(f"{shown(source)}: is a directory; pass a model file")
    # a regular file (after symlinks) under the cap: a FIFO or /dev/zero would block or
    # never end inside the library that reads it
    check_regular(path, "model file", max_bytes=MAX_MODEL_BYTES)
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix not in IMPORTERS:
        raise UsageError(
            f"{source}: unknown model format {suffix or '(no suffix)'!r}; supported: "
            + ", ".join(sorted(IMPORTERS))
        )
    try:
        return IMPORTERS[suffix](path, **options)
    except LipverifyError:
        raise
    except MemoryError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a hostile file must not end in a traceback
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(
            f"{source}: cannot load the {suffix} file ({type(exc).__name__}: {text})"
        ) from exc
