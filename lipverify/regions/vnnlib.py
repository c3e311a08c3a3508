"""Read the input box of a VNN-LIB property (the SMT-LIB subset verification tools exchange).

Supported: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``, and ``(assert ...)``
of bounds on inputs (``(<= X_0 0.5)``, ``(>= X_0 0.1)``, either side, ``=``, strict
comparisons read as their closure, conjunctions with ``and``, negative numbers as ``-0.5`` or
``(- 0.5)``). Assertions that speak only of outputs (usually ``(or (and ...) ...)``, the
property's unsafe set) are kept as notes: a local Lipschitz bound uses the input box alone.

The text is tokenised by a small s-expression reader (nothing is evaluated). Limits: files
over 50 MB, nesting deeper than 64, a missing bound for some ``X_i``, ``lo > hi``, a non-finite
number, disjunctions over inputs and unknown commands are a :class:`ModelLoadError` naming the
file, the line and the variable.

>>> box, notes = parse_vnnlib('''(declare-const X_0 Real) (declare-const Y_0 Real)
... (assert (<= X_0 0.5)) (assert (>= X_0 -0.25)) (assert (<= Y_0 3))''')
>>> box.lo.tolist(), box.hi.tolist()
([-0.25], [0.5])
>>> notes
['output constraints ignored: (<= Y_0 3)']
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .region import Box

#: Largest VNN-LIB file read (bytes).
MAX_BYTES = 50 * 2**20
#: Deepest nesting of parentheses accepted.
MAX_DEPTH = 64
#: Commands without meaning for the input box, accepted and skipped.
IGNORED = ("check-sat", "get-model", "exit", "set-logic", "set-info", "set-option")
#: A note shows at most this many characters of an output constraint.
NOTE_CHARS = 200

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")
_COMPARE = {"<=": "<=", "<": "<=", ">=": ">=", ">": ">=", "=": "="}
_FLIP = {"<=": ">=", ">=": "<=", "=": "="}


class _List(list):
    """A parenthesised form, with the line it starts on."""

    line = 0


def _forms(text: str, source: str) -> list[_List]:
    """The top-level forms of ``text`` (comments after ``;`` dropped)."""
    stack: list[_List] = [_List()]
    for lineno, raw in enumerate(text.splitlines(), start=1):
        for tok in _TOKEN.findall(raw.split(";", 1)[0]):
            if tok == "(":
                if len(stack) > MAX_DEPTH:
                    raise ModelLoadError(f"{source}: line {lineno}: parentheses nested deeper "
                                         f"than {MAX_DEPTH}")
                form = _List()
                form.line = lineno
                stack[-1].append(form)
                stack.append(form)
            elif tok == ")":
                if len(stack) == 1:
                    raise ModelLoadError(f"{source}: line {lineno}: unbalanced ')'")
                stack.pop()
            else:
                if len(stack) == 1:
                    raise ModelLoadError(f"{source}: line {lineno}: unexpected token {tok!r} "
                                         "outside any (command ...)")
                stack[-1].append(tok)
    if len(stack) > 1:
        raise ModelLoadError(f"{source}: the form opened on line {stack[-1].line} is never "
                             "closed (missing ')')")
    return stack[0]


def _show(expr) -> str:
    return f"({' '.join(_show(e) for e in expr)})" if isinstance(expr, list) else expr


def _variables(expr) -> set[str]:
    if isinstance(expr, list):
        return set().union(*(_variables(e) for e in expr)) if expr else set()
    return {expr} if _VARIABLE.fullmatch(expr) else set()


def _number(expr, where: str) -> float | None:
    """The value of a numeral (or ``(- numeral)``), None if ``expr`` is no number."""
    if isinstance(expr, list):
        if len(expr) == 2 and expr[0] == "-":
            inner = _number(expr[1], where)
            return None if inner is None else -inner
        return None
    if not _NUMBER.fullmatch(expr):
        return None
    value = float(expr)
    if not math.isfinite(value):
        raise ModelLoadError(f"{where}: number {expr} is not finite in float64")
    return value


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.declared: dict[str, int] = {}  # name -> line
        self.lo: dict[int, float] = {}
        self.hi: dict[int, float] = {}
        self.notes: list[str] = []

    def where(self, form: _List) -> str:
        return f"{self.source}: line {form.line}"

    def command(self, form) -> None:
        if not isinstance(form, _List) or not form or not isinstance(form[0], str):
            raise ModelLoadError(f"{self.where(form)}: expected (command ...), got {_show(form)}")
        head = form[0]
        if head == "declare-const":
            self.declare(form)
        elif head == "assert":
            if len(form) != 2:
                raise ModelLoadError(f"{self.where(form)}: assert takes one expression")
            self.assertion(form, form[1])
        elif head not in IGNORED:
            raise ModelLoadError(f"{self.where(form)}: unsupported command {head!r} (VNN-LIB "
                                 "allows declare-const and assert)")

    def declare(self, form: _List) -> None:
        if len(form) != 3 or not isinstance(form[1], str) or form[2] != "Real":
            raise ModelLoadError(f"{self.where(form)}: expected (declare-const NAME Real), got "
                                 f"{_show(form)}")
        name = form[1]
        if not _VARIABLE.fullmatch(name):
            raise ModelLoadError(f"{self.where(form)}: variable {name!r} is neither X_i (input) "
                                 "nor Y_j (output)")
        if name in self.declared:
            raise ModelLoadError(f"{self.where(form)}: {name} declared twice (first on line "
                                 f"{self.declared[name]})")
        self.declared[name] = form.line

    def assertion(self, form: _List, expr) -> None:
        names = _variables(expr)
        missing = sorted(names - set(self.declared))
        if missing:
            raise ModelLoadError(f"{self.where(form)}: {missing[0]} is used before its "
                                 "declare-const")
        inputs = {n for n in names if n.startswith("X")}
        if not inputs:
            text = _show(expr)
            if len(text) > NOTE_CHARS:
                text = text[:NOTE_CHARS] + " ..."
            self.notes.append(f"output constraints ignored: {text}")
            return
        if inputs != names:
            raise ModelLoadError(f"{self.where(form)}: a constraint mixing inputs and outputs "
                                 f"is not supported: {_show(expr)[:NOTE_CHARS]}")
        self.input_bound(form, expr)

    def input_bound(self, form: _List, expr) -> None:
        if isinstance(expr, list) and expr and expr[0] == "and":
            for part in expr[1:]:
                self.input_bound(form, part)
            return
        if not (isinstance(expr, list) and len(expr) == 3 and expr[0] in _COMPARE):
            what = "a disjunction over inputs" if isinstance(expr, list) and expr and \
                expr[0] == "or" else "this input constraint"
            raise ModelLoadError(f"{self.where(form)}: {what} is not supported (an input box "
                                 f"needs bounds like (<= X_0 0.5)): {_show(expr)[:NOTE_CHARS]}")
        op, left, right = _COMPARE[expr[0]], expr[1], expr[2]
        if isinstance(right, str) and _VARIABLE.fullmatch(right):
            op, left, right = _FLIP[op], right, left
        value = _number(right, self.where(form))
        if not (isinstance(left, str) and _VARIABLE.fullmatch(left)) or value is None:
            raise ModelLoadError(f"{self.where(form)}: expected a bound between one input and a "
                                 f"number, got {_show(expr)}")
        i = int(left[2:])
        if op in ("<=", "="):
            self.hi[i] = min(self.hi.get(i, math.inf), value)
        if op in (">=", "="):
            self.lo[i] = max(self.lo.get(i, -math.inf), value)

    def box(self) -> Box:
        xs = sorted(int(n[2:]) for n in self.declared if n.startswith("X"))
        if not xs:
            raise ModelLoadError(f"{self.source}: no input variables (declare-const X_0 Real ...)")
        if xs != list(range(len(xs))):
            gap = next(i for i, x in enumerate(xs) if x != i)
            raise ModelLoadError(f"{self.source}: inputs must be X_0..X_{len(xs) - 1}; X_{gap} "
                                 "is not declared")
        for bounds, side in ((self.lo, "lower"), (self.hi, "upper")):
            lack = [i for i in xs if i not in bounds]
            if lack:
                more = f" (and {len(lack) - 1} more)" if len(lack) > 1 else ""
                raise ModelLoadError(f"{self.source}: X_{lack[0]} has no {side} bound{more}; "
                                     "every input needs both")
        lo = np.array([self.lo[i] for i in xs])
        hi = np.array([self.hi[i] for i in xs])
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise ModelLoadError(f"{self.source}: X_{i} has lower bound {lo[i]:g} above its "
                                 f"upper bound {hi[i]:g}: the input box is empty")
        return Box(lo, hi)


def parse_vnnlib(text: str, source: str = "<vnnlib>") -> tuple[Box, list[str]]:
    """``(input box, notes)`` of VNN-LIB ``text`` (see module docstring)."""
    reader = _Reader(source)
    for form in _forms(text, source):
        reader.command(form)
    return reader.box(), reader.notes


def read_vnnlib(path: str | Path) -> tuple[Box, list[str]]:
    """``(input box, notes)`` of the VNN-LIB file at ``path``; notes say which output
    constraints were not used. A missing, special (FIFO, device), oversized or non-UTF-8 file
    is a :class:`ModelLoadError` naming it."""
    from ..runtime.files import read_regular_text

    text = read_regular_text(path, what="VNN-LIB file", max_bytes=MAX_BYTES)
    return parse_vnnlib(text, str(path))
