"""Shared pieces of the command line: the error handler (exit codes), the model options
every model command takes, the checks of numeric and path options, and the stderr console."""

from __future__ import annotations

import math
import os
import sys
import traceback
from contextlib import suppress
from functools import wraps
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

import lipverify
from lipverify.errors import LipverifyError, UsageError

err = Console(stderr=True)
EXIT_UNSOUND = 6
EXIT_INVALID_CERT = 7
#: Exit code of an unexpected exception (a bug) and of a numerical failure or lack of memory.
EXIT_INTERNAL = 1
EXIT_NUMERICAL = 5
#: Largest input a shape option may describe (elements), as for ONNX tensors.
MAX_SHAPE_ELEMENTS = 2**31


def parse_rows(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers, e.g. 0,3",
                                 param_hint="'--output-rows'") from exc


# ------------------------------------------------------------------------------ errors
def _print_error(text: str) -> None:
    """One "error:" line on stderr, never wrapped at the console width nor read as markup."""
    err.print(f"[bold red]error:[/] {escape(text)}", markup=True, highlight=False,
              soft_wrap=True)


def report_error(exc: Exception, debug: bool = False) -> NoReturn:
    """Print ``exc`` as one "error:" line (the traceback first with ``--debug``) and exit with
    its code: a :class:`LipverifyError`'s own, 5 for a numerical failure or lack of memory that
    escaped as a raw exception, 1 for anything else (a bug)."""
    from lipverify.numerics import as_numerical_error

    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, LipverifyError):
        _print_error(str(exc))
        best = getattr(exc, "best", None)
        if isinstance(best, lipverify.BoundResult) and best.certified:
            err.print(f"best certified bound found before the failure: {best.bound:.10g} "
                      f"({best.method}, {best.status})", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    if isinstance(exc, MemoryError):
        _print_error(f"out of memory: {exc}")
        sys.exit(EXIT_NUMERICAL)
    numerical = as_numerical_error(exc, "computation")
    if numerical is not None:
        _print_error(str(numerical))
        sys.exit(EXIT_NUMERICAL)
    first = (str(exc).strip().splitlines() or [""])[0]
    hint = "" if debug else "; rerun with --debug for the traceback"
    _print_error(f"internal error ({type(exc).__name__}: {first}){hint}; please report it")
    sys.exit(EXIT_INTERNAL)


def passes_through(exc: BaseException) -> bool:
    """Exceptions click reports itself (usage errors, --help, aborts) or that end the process."""
    return isinstance(exc, (click.ClickException, click.exceptions.Exit, click.Abort))


def debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug", False))


def handle_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if passes_through(exc):
                raise
            report_error(exc, debugging())

    return wrapper


# ------------------------------------------------------------------- option checks
class FinitePositive(click.ParamType):
    """A finite number > 0 (seconds, GiB): NaN, inf, 0 and negatives are usage errors."""

    name = "number"

    def __init__(self, unit: str = ""):
        self.unit = unit

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and number > 0):
            unit = f" of {self.unit}" if self.unit else ""
            self.fail(f"expected a finite positive number{unit}, got {value!r}", param, ctx)
        return number


SECONDS = FinitePositive("seconds")
GIB = FinitePositive("GiB")


def parse_shape(value: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``: positive integers, at most
    :data:`MAX_SHAPE_ELEMENTS` in all; anything else is a :class:`UsageError`."""
    hint = "expected comma-separated positive sizes, e.g. 1,28,28"
    try:
        shape = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise UsageError(f"--input-shape {value!r}: {hint}") from None
    if any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape {value!r}: {hint}")
    if math.prod(shape) > MAX_SHAPE_ELEMENTS:
        raise UsageError(f"--input-shape {value!r}: more than {MAX_SHAPE_ELEMENTS:,} elements")
    return shape


def _check_shape(ctx, param, value):
    if value is not None:
        try:
            parse_shape(value)
        except UsageError:
            raise click.BadParameter(f"{value!r}: expected comma-separated positive sizes, "
                                     f"e.g. 1,28,28 (at most {MAX_SHAPE_ELEMENTS:,} elements)"
                                     ) from None
    return value


def _check_activation(ctx, param, value):
    """The activation spec parses (name, parameter count and values), whatever the model."""
    from lipverify.importers.weights import parse_activation

    try:
        parse_activation(value)
    except LipverifyError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def parse_domain(ctx, param, value):
    """``--domain LO:HI`` as ``(lo, hi)``: finite numbers with ``lo < hi``."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give LO:HI, e.g. 0:1") from None
    if not (lo < hi) or not all(math.isfinite(v) for v in (lo, hi)):
        raise click.BadParameter(f"{value!r}: need finite LO < HI")
    return lo, hi


def output_file(ctx, param, value):
    """A file option the command will write (a certificate, a CSV): its folder must exist and
    the path must not be a folder, checked before any work."""
    if value is None:
        return value
    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(f"{value}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise click.BadParameter(f"{value}: the folder {path.parent} does not exist")
    return value


def write_file(path: str | Path, text: str, what: str) -> None:
    """Write ``text`` to ``path`` all or nothing (a temporary file beside it, then renamed): a
    missing folder or an unwritable path is a :class:`UsageError` naming it, and no partial
    file is left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "x", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        raise UsageError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None


def load_options(f):
    """Options shared by every command that loads a model."""
    opts = [
        click.option(
            "--layout",
            type=click.Choice(["out-in", "in-out"]),
            help="Weight storage orientation, when a weight file is ambiguous.",
        ),
        click.option(
            "--activation",
            default="relu",
            show_default=True,
            callback=_check_activation,
            help="Hidden activation for weight files that do not store one "
            "(e.g. relu, tanh, leaky_relu:0.01).",
        ),
        click.option(
            "--keep-softmax",
            is_flag=True,
            help="Bound a final Softmax as a 1-Lipschitz map instead of dropping it.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow unpickling whole-model PyTorch files. Only for trusted files.",
        ),
        click.option("--input-shape", callback=_check_shape,
                     help="Input shape for PyTorch files, e.g. 1,28,28."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def loader_kwargs(layout, activation, keep_softmax, trust_pickle, input_shape) -> dict:
    opts = {"activation": activation, "keep_softmax": keep_softmax, "trust_pickle": trust_pickle}
    if layout:
        opts["layout"] = layout
    if input_shape:
        opts["input_shape"] = parse_shape(input_shape)
    return opts


def note(text: str) -> None:
    """A yellow "note:" line on stderr (text printed as is, no markup)."""
    err.print("note:", style="yellow", end=" ")
    err.print(text, markup=False, highlight=False)
