"""Shared pieces of the command line: the error handler (exit codes), the model options
every model command takes, and the stderr console."""

from __future__ import annotations

import sys
import traceback
from functools import wraps

import click
from rich.console import Console

import lipverify
from lipverify.errors import LipverifyError

err = Console(stderr=True)
EXIT_UNSOUND = 6
EXIT_INVALID_CERT = 7


def parse_rows(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers, e.g. 0,3") from exc


def handle_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except LipverifyError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            best = getattr(exc, "best", None)
            if isinstance(best, lipverify.BoundResult) and best.certified:
                err.print(f"best certified bound found before the failure: {best.bound:.10g} "
                          f"({best.method}, {best.status})", highlight=False)
            sys.exit(exc.exit_code)
        except MemoryError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] out of memory: {exc}")
            sys.exit(5)

    return wrapper


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
        click.option("--input-shape", help="Input shape for PyTorch files, e.g. 1,28,28."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def loader_kwargs(layout, activation, keep_softmax, trust_pickle, input_shape) -> dict:
    opts = {"activation": activation, "keep_softmax": keep_softmax, "trust_pickle": trust_pickle}
    if layout:
        opts["layout"] = layout
    if input_shape:
        opts["input_shape"] = tuple(int(v) for v in input_shape.split(","))
    return opts


def note(text: str) -> None:
    """A yellow "note:" line on stderr (text printed as is, no markup)."""
    err.print("note:", style="yellow", end=" ")
    err.print(text, markup=False, highlight=False)
