"""Typed options: frozen dataclasses declared with each method and with the loaders.

One declaration serves the Python API, the command line and the batch manifest: an unknown
key is a :class:`~lipverify.errors.UsageError` (exit 2) that lists the known ones, and every
value is checked against its field's type and constraint before any work.

>>> SDPOptions.from_dict({"time_limit": 5, "solver": "scs"})
SDPOptions(solver='scs', time_limit=5.0, form='chordal', device='auto')
>>> try:
...     SDPOptions.from_dict({"time_limt": 5})
... except UsageError as exc:
...     print(str(exc).split(";")[0])
unknown option 'time_limt' (did you mean 'time_limit'?)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

from .errors import UsageError

#: Devices of the solvers that can use a GPU (:mod:`lipverify.solvers.lowrank`).
DEVICES = ("auto", "cpu", "cuda")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(value, name: str, *, allow_none: bool = False) -> bool | None:
    """A strict boolean: ``True``/``False``, the ints 0 and 1, or the words
    true/false, yes/no, on/off, 1/0 (any case). Anything else (``"maybe"``, ``2``, a
    float, ``None`` unless ``allow_none``) is a :class:`~lipverify.errors.UsageError`
    naming the option, never a silent "truthy".

    >>> parse_bool("No", "trust_pickle"), parse_bool(1, "keep_softmax")
    (False, True)
    >>> try:
    ...     parse_bool("maybe", "trust_pickle")
    ... except UsageError as exc:
    ...     print(exc)
    bad value 'maybe' for trust_pickle: expected true or false (also yes/no, on/off, 1/0)
    """
    if isinstance(value, bool):
        return value
    if value is None and allow_none:
        return None
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        return bool(value)  # numpy.bool_ (not a subclass of bool)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    if isinstance(value, int) and abs(value) >= 10**18:
        shown = "a very large integer"
    elif isinstance(value, (str, int, float, type(None))):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    else:
        shown = f"a {type(value).__name__}"
    raise UsageError(f"bad value {shown} for {name}: expected true or false "
                     "(also yes/no, on/off, 1/0)")


#: value checks by name: (predicate, what a good value is)
CHECKS = {
    "positive": (lambda v: _number(v) and v > 0, "a positive number"),
    "positive_int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                     "a positive integer"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "an integer >= 0"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "any": (lambda v: True, "any value"),
}


def option(default, check: str = "any", *, choices: tuple | None = None, help: str = "",
           float_value: bool = False):
    """A dataclass field with a value check (a name of :data:`CHECKS`) or ``choices``."""
    return field(default=default, metadata={"check": check, "choices": choices, "help": help,
                                             "float": float_value})


@dataclass(frozen=True)
class Options:
    """Base of every options record: :meth:`from_dict` checks keys and values."""

    #: what the record configures, for messages
    what: ClassVar[str] = "option"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("check") == "bool":  # strict: "no" is False, "maybe" an error
                allow_none = f.default is None or "None" in str(f.type)
                object.__setattr__(self, f.name, parse_bool(value, f.name,
                                                            allow_none=allow_none))
                continue
            if value is None or value is f.default:
                continue
            meta = f.metadata
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise UsageError(f"bad value {value!r} for {f.name}; choose one of: "
                                 + ", ".join(map(str, choices)))
            check, good = CHECKS[meta.get("check", "any")]
            if choices is None and not check(value):
                raise UsageError(f"bad value {value!r} for {f.name}: expected {good}")
            if meta.get("float") and _number(value):
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], extra_known: tuple[str, ...] = ()):
        """The record of ``values``; a key neither a field nor in ``extra_known`` is refused."""
        unknown = [k for k in values if k not in cls.names() and k not in extra_known]
        if unknown:
            raise unknown_option(unknown[0], (*cls.names(), *extra_known), cls.what)
        return cls(**{k: v for k, v in values.items() if k in cls.names()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: (None if f.default is MISSING else f.default) for f in fields(cls)}


def unknown_option(key: str, known, what: str = "option") -> UsageError:
    """The error for an unknown key, with the closest known name and the full list."""
    known = list(dict.fromkeys(known))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"unknown {what} {key!r}{hint}; known {what}s: {', '.join(known)}")


# --------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class NoOptions(Options):
    """A method with no options (the closed forms: naive, gershgorin, power)."""


@dataclass(frozen=True)
class TimeOptions(Options):
    """ldlt-fast: a wall-clock limit (its certificate stops refining its margin past it)."""

    time_limit: float | None = option(None, "positive", float_value=True,
                                      help="seconds for the whole bound")


@dataclass(frozen=True)
class SDPOptions(Options):
    """The LipSDP family: solver, wall-clock limit, LMI form (FORMULATIONS.md §3, §5)."""

    solver: str = option("auto", "str", help="SDP solver (`lipverify solvers`)")
    time_limit: float | None = option(None, "positive", float_value=True,
                                      help="seconds for the whole bound")
    form: str = option("chordal", choices=("chordal", "dense", "full", "monolithic"),
                       help="chordal (§3) or the dense/monolithic LMI (§5a), for checking")
    device: str = option("auto", choices=DEVICES,
                         help="where the low-rank solver runs: auto (CUDA when torch sees a "
                              "GPU), cpu or cuda; certificates are always float64 on the CPU")


@dataclass(frozen=True)
class SolverOptions(Options):
    """ldlt: the conic solver of its per-layer SDPs, and a time limit."""

    solver: str = option("auto", "str")
    time_limit: float | None = option(None, "positive", float_value=True)


@dataclass(frozen=True)
class LPOptions(Options):
    """gershgorin-lmi: a time limit and the number of LPs of its scaling search."""

    time_limit: float | None = option(None, "positive", float_value=True)
    max_lps: int = option(400, "positive_int", help="LPs in the scaling search")


@dataclass(frozen=True)
class SplitOptions(SDPOptions):
    """lipsdp-split: the SDP options and the largest segment order."""

    budget: float = option(4500, "positive", float_value=True,
                           help="largest LMI order of one segment")


@dataclass(frozen=True)
class LowerOptions(Options):
    """The sampled lower bound (FORMULATIONS.md §6.4)."""

    samples: int = option(256, "positive_int", help="starting points")
    steps: int = option(100, "count", help="ascent steps per kept point")
    seed: int = option(0, "int")
    time_limit: float | None = option(None, "positive", float_value=True)
    top: int = option(8, "positive_int", help="points kept after screening")
    smooth_beta: float = option(20.0, "positive", float_value=True)
    threads: int | None = option(1, "positive_int", help="torch threads (None: torch's default)")


# --------------------------------------------------------------------------- loaders
@dataclass(frozen=True)
class LoadOptions(Options):
    """Options of the importers (every loader takes the ones that apply to its format)."""

    layout: str | None = option(None, choices=("out-in", "in-out"),
                                help="weight files: storage orientation")
    activation: str = option("relu", "str", help="weight files: the hidden activation")
    keep_softmax: bool = option(False, "bool", help="bound a final Softmax instead of dropping")
    trust_pickle: bool = option(False, "bool", help="unpickle a whole PyTorch model (trusted)")
    input_shape: Any = option(None, help="PyTorch: input shape without the batch dimension")
    example_input: Any = option(None, help="PyTorch: an example input, batch included")
    state_dict: Any = option(None, help="PyTorch: weights for the module's architecture")
    name: str | None = option(None, "str", help="the network's name in results")
    nnet_normalize: bool = option(False, "bool", help=".nnet: fold its input normalisation")


#: The loader options a model file (CLI flag, manifest entry) can set.
FILE_LOAD_KEYS = ("layout", "activation", "keep_softmax", "trust_pickle", "input_shape",
                  "nnet_normalize")
#: The boolean loader options, parsed strictly (:func:`parse_bool`) wherever they are read.
BOOL_LOAD_KEYS = tuple(f.name for f in fields(LoadOptions) if f.metadata.get("check") == "bool")
#: Options of :func:`lipverify.bound` itself, besides the method's and the loader's.
BOUND_KEYS = ("lower_bound",)


def float_options(classes) -> tuple[str, ...]:
    """Names of the options in seconds or scales (60 and 60.0 are the same value)."""
    return tuple(dict.fromkeys(f.name for c in classes for f in fields(c)
                               if f.metadata.get("float")))
