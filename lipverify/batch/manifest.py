"""Batch manifests: which models, methods, norms and options to cross.

A manifest is YAML (or the same data built from command-line paths)::

    models:
      - models/*.onnx                       # a path, glob or directory, relative to this file
      - path: ../shared/models/weights/glipsdp_digits/*.mat
        output_rows: [7]                    # per-model options: output rows, load options
        optional: true                      # skip quietly when nothing matches
    methods: [naive, gershgorin, ldlt-fast, lower]
    norms: [l2]                             # default [l2]
    options: {time_limit: 60}               # one option set, or a list of them (crossed)
    memory_limit_gb: 4                      # per local worker process (optional)
    plugins: [my_methods]                   # modules that register extra bound methods
    robustness:                             # also certified robust accuracy (l2 jobs)
      data: ../shared/data/mnist_vnncomp2021.npz   # x (N, ...), y (N,) labels
      eps: [0.1, 0.5, 1.0]                  # optional; pairs, pair_solve, local, domain too

Validation collects every problem (missing model files, unknown methods, norms and keys,
bad values) and raises one :class:`~lipverify.errors.UsageError` listing them all, before
any job starts.
"""

from __future__ import annotations

import glob
import importlib
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..options import (
    BOOL_LOAD_KEYS,
    BOUND_KEYS,
    FILE_LOAD_KEYS,
    LowerOptions,
    LPOptions,
    SDPOptions,
    SolverOptions,
    SplitOptions,
    float_options,
    parse_bool,
)
from ..runtime.files import check_regular, read_regular_text, shown

#: The options records of the built-in methods; plugins' methods add theirs at check time.
_OPTION_CLASSES = (SDPOptions, SolverOptions, LPOptions, SplitOptions, LowerOptions)

TOP_KEYS = ("models", "methods", "norms", "options", "memory_limit_gb", "plugins", "robustness")
#: Keys of the ``robustness`` mapping and their defaults (``data`` is required).
ROBUSTNESS_KEYS = {"data": None, "eps": [0.1, 0.25, 0.5, 1.0], "pairs": True,
                   "pair_solve": "reuse", "local": False, "domain": None}
#: Per-model keys besides ``path`` and ``optional``: output rows and the loaders' options.
MODEL_KEYS = ("output_rows", *FILE_LOAD_KEYS)
#: Options in seconds or scales: 60 and 60.0 are the same value (and the same job key).
FLOAT_OPTIONS = float_options(_OPTION_CLASSES)
NORMS = ("l2", "linf")

#: Limits on what a manifest may make us read or build (hostile files end as a UsageError):
MAX_MANIFEST_BYTES = 16 * 2**20  # the YAML file itself
MAX_YAML_ALIASES = 100  # `*name` references in one manifest
MAX_YAML_NODES = 100_000  # values once every alias is expanded ("billion laughs")
MAX_YAML_DEPTH = 64  # nesting of lists and mappings
MAX_GLOB_MATCHES = 10_000  # paths one glob or directory entry may match (the walk stops there)
MAX_GLOB_VISITS = 200_000  # directory entries one glob may look at, matching or not


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ModelSpec:
    """One model file and the options that go with it (output rows, load options)."""

    path: Path  # absolute
    display: str  # as shown in tables: relative to the working directory when possible
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A validated batch: every model exists, every method and option is known."""

    models: tuple[ModelSpec, ...]
    methods: tuple[str, ...]
    norms: tuple[str, ...] = ("l2",)
    option_sets: tuple[dict[str, Any], ...] = ({},)
    memory_limit_gb: float | None = None
    plugins: tuple[str, ...] = ()
    source: str = "command line"
    #: certified robust accuracy for every l2 job: data (absolute path), eps, pairs, ...
    robustness: dict[str, Any] | None = None


def load_manifest(
    path: str | os.PathLike, options: dict | None = None, model_options: dict | None = None,
    **overrides,
) -> Manifest:
    """Read and validate a YAML manifest.

    Command-line flags: ``overrides`` replace top-level keys (``methods``, ``norms``...;
    ``plugins`` are added), ``options`` are set in every option set (``time_limit``),
    ``model_options`` apply to every model entry that does not set them itself.

    >>> load_manifest("no-such-manifest.yaml")
    Traceback (most recent call last):
    ...
    lipverify.errors.UsageError: no-such-manifest.yaml: no such manifest file; check the path
    """
    path = Path(path)
    # a regular file (a FIFO or /dev/zero would block or never end), at most 16 MiB, UTF-8
    text = read_regular_text(path, what="manifest file", max_bytes=MAX_MANIFEST_BYTES,
                             error=UsageError)
    data = parse_yaml(text, shown(path))
    if not isinstance(data, dict):
        raise UsageError(
            f"{path}: a manifest is a YAML mapping with keys {', '.join(TOP_KEYS)} "
            "(see README, 'Batch comparisons')"
        )
    _apply_flags(data, options, model_options, overrides)
    return build_manifest(data, base=path.resolve().parent, source=str(path))


def _yaml_loader():
    """A SafeLoader that refuses more than MAX_YAML_ALIASES aliases and nesting deeper than
    MAX_YAML_DEPTH while composing (before anything is built)."""
    import yaml

    class LimitedLoader(yaml.SafeLoader):
        aliases = 0
        depth = 0
        source = "manifest"

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    line = self.peek_event().start_mark.line + 1
                    raise UsageError(
                        f"{self.source}: more than {MAX_YAML_ALIASES} YAML aliases (*name, "
                        f"line {line}); write the entries out instead")
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    raise UsageError(f"{self.source}: YAML nested more than {MAX_YAML_DEPTH} "
                                     f"levels deep (line {line})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return LimitedLoader


def _expanded_size(root, limit: int, source: str) -> int:
    """How many values the YAML graph under ``root`` builds with every alias expanded,
    counting (iteratively, each shared node once) until ``limit`` is passed."""
    import yaml

    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return ()

    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            open_.discard(key)
            if sizes[key] > limit:
                return sizes[key]
            continue
        if key in sizes:
            continue
        if key in open_:
            raise UsageError(f"{source}: a YAML alias refers to a list or mapping that holds "
                             f"it (line {node.start_mark.line + 1}); remove the cycle")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))
    return sizes.get(id(root), 0)


def parse_yaml(text: str, source: str = "manifest"):
    """``yaml.safe_load`` with limits: at most MAX_YAML_ALIASES aliases, MAX_YAML_NODES values
    once aliases are expanded, MAX_YAML_DEPTH levels; every failure is one UsageError line
    naming ``source`` (and the line, for syntax errors).

    >>> parse_yaml("a: &x [1, 2]\\nb: *x")
    {'a': [1, 2], 'b': [1, 2]}
    >>> parse_yaml("a: [1, 2", "m.yaml")
    Traceback (most recent call last):
    ...
    lipverify.errors.UsageError: m.yaml: not valid YAML at line 1, column 9: expected ',' or \
']', but got '<stream end>'; fix the syntax and re-run
    """
    import yaml

    loader = None
    try:
        loader = _yaml_loader()(text)  # the reader refuses control characters here
        loader.source = source
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES, source) > MAX_YAML_NODES:
            raise UsageError(
                f"{source}: the YAML expands to more than {MAX_YAML_NODES} values (aliases of "
                "aliases, a 'billion laughs'); write the entries out instead")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = " ".join(str(exc.problem or exc.context or type(exc).__name__).split())
        raise UsageError(f"{source}: not valid YAML{where}: {why}; fix the syntax and re-run") \
            from None
    except yaml.YAMLError as exc:
        why = " ".join(str(exc).split())[:200]
        raise UsageError(f"{source}: not valid YAML: {why}; fix the syntax and re-run") from None
    except RecursionError:
        raise UsageError(f"{source}: YAML nested too deeply; fix the file") from None
    except (ValueError, OverflowError, TypeError) as exc:  # a date 2001-13-45, a huge integer
        why = " ".join(str(exc).split())[:200]
        raise UsageError(f"{source}: a YAML value cannot be read ({why}); fix the file") \
            from None
    finally:
        if loader is not None:
            loader.dispose()


def _apply_flags(data: dict, options, model_options, overrides: dict) -> None:
    """Command-line flags on a parsed manifest (see :func:`load_manifest`)."""
    extra_plugins = overrides.pop("plugins", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if extra_plugins:
        listed = data.get("plugins") or []
        data["plugins"] = [*listed, *extra_plugins] if isinstance(listed, list) else listed
    if options:
        sets = data.get("options") or {}
        data["options"] = ([{**s, **options} for s in sets] if isinstance(sets, list)
                           else {**sets, **options} if isinstance(sets, dict) else sets)
    if model_options and isinstance(data.get("models"), list):
        data["models"] = [
            {**model_options, **e} if isinstance(e, dict) else {**model_options, "path": e}
            for e in data["models"]
        ]


def manifest_from_paths(
    paths, methods, norms=("l2",), options=None, model_options=None, **extra
) -> Manifest:
    """A manifest for model paths, globs or directories given on the command line."""
    entries = [{"path": str(p), **(model_options or {})} for p in paths]
    data = {"models": entries, "methods": list(methods), "norms": list(norms),
            "options": options or {}, **{k: v for k, v in extra.items() if v is not None}}
    return build_manifest(data, base=Path.cwd(), source="command line")


def build_manifest(data: dict, base: Path, source: str) -> Manifest:
    """Validate ``data`` (the parsed manifest); raise one UsageError listing every problem."""
    problems: list[str] = []
    problems += [f"unknown key {k!r}; known keys: {', '.join(TOP_KEYS)}"
                 for k in data if k not in TOP_KEYS]
    plugins = _plugins(data.get("plugins", ()), problems)
    methods = _methods(data.get("methods"), problems)
    norms = _norms(data.get("norms", ["l2"]), problems)
    option_sets = _option_sets(data.get("options", {}), problems)
    try:
        models = _models(data.get("models"), base, problems)
    except _TooManyMatches as exc:  # the walk stopped at the cap: nothing more to list
        problems.append(f"models: {exc}")
        models = []
    robustness = _robustness(data.get("robustness"), base, problems)
    memory = data.get("memory_limit_gb")
    if memory is not None and not (_is_number(memory) and memory > 0):
        problems.append(f"memory_limit_gb: expected a positive number of GiB, got {memory!r}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise UsageError(
            f"{source}: {len(problems)} problem(s) in the batch, nothing was run:\n{lines}"
        )
    return Manifest(
        models=tuple(models),
        methods=tuple(methods),
        norms=tuple(norms),
        option_sets=tuple(option_sets),
        memory_limit_gb=None if memory is None else float(memory),
        plugins=tuple(plugins),
        source=source,
        robustness=robustness,
    )


def _robustness(value, base: Path, problems: list[str]) -> dict[str, Any] | None:
    """The ``robustness`` mapping, checked, with defaults and the data file's absolute path."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("robustness: expected a mapping with keys "
                        f"{', '.join(ROBUSTNESS_KEYS)}, e.g. {{data: test.npz, eps: [0.5]}}")
        return None
    bad = [k for k in value if k not in ROBUSTNESS_KEYS]
    if bad:
        problems.append(f"robustness: unknown key(s) {', '.join(map(repr, bad))}; known: "
                        f"{', '.join(ROBUSTNESS_KEYS)}")
    out = {**ROBUSTNESS_KEYS, **{k: v for k, v in value.items() if k in ROBUSTNESS_KEYS}}
    data = out["data"]
    if not isinstance(data, str) or not data:
        problems.append("robustness: data must be the path of an .npz with arrays x and y")
    else:
        path = Path(os.path.expanduser(data))
        path = path if path.is_absolute() else base / path
        try:
            check_regular(path, "robustness data", max_bytes=2 * 2**30, error=UsageError)
            out["data"] = str(path.resolve())
        except UsageError as exc:
            problems.append(f"robustness: {exc}")
    eps = out["eps"]
    if not (isinstance(eps, list) and eps and all(_is_number(e) and e > 0 for e in eps)):
        problems.append(f"robustness: eps must be a list of radii > 0, got {eps!r}")
    for key in ("pairs", "local"):
        if not isinstance(out[key], bool):
            problems.append(f"robustness: {key} must be true or false, got {out[key]!r}")
    if out["pair_solve"] not in ("reuse", "full"):
        problems.append(f"robustness: pair_solve must be reuse or full, got "
                        f"{out['pair_solve']!r}")
    dom = out["domain"]
    if dom is not None and not (isinstance(dom, list) and len(dom) == 2
                                and all(_is_number(d) for d in dom) and dom[0] < dom[1]):
        problems.append(f"robustness: domain must be [lo, hi] with lo < hi, got {dom!r}")
    return out


def import_plugins(names) -> None:
    """Import modules that register extra methods (their import registers them)."""
    for name in names:
        importlib.import_module(name)


def _plugins(value, problems: list[str]) -> list[str]:
    names = _string_list(value, "plugins", problems)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"plugins: cannot import {name!r} ({exc}); is it on PYTHONPATH?")
    return names


def _string_list(value, what: str, problems: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        problems.append(f"{what}: expected a list of names, got {value!r}")
        return []
    return list(value)


def _methods(value, problems: list[str]) -> list[str]:
    from ..methods import METHODS, list_methods

    if value is None:
        problems.append("methods: missing; list the bound methods, e.g. [naive, lower]")
        return []
    names = _string_list(value, "methods", problems)
    list_methods()  # load the built-in registry (plugins are already imported)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        problems.append(
            f"methods: unknown method(s) {', '.join(map(repr, unknown))}; known methods: "
            f"{', '.join(sorted(METHODS))} (or add a plugin module that registers it)"
        )
    if value in ([], (), ""):
        problems.append("methods: empty; list at least one bound method")
    return list(dict.fromkeys(names))


def _norms(value, problems: list[str]) -> list[str]:
    names = _string_list(value, "norms", problems)
    for name in names:
        if name not in NORMS:
            problems.append(f"norms: unknown norm {name!r}; choose from {', '.join(NORMS)}")
    return list(dict.fromkeys(names)) or ["l2"]


def _check_option(key: str, value) -> str | None:
    """What is wrong with one bound option, by the methods' own declarations (None: fine)."""
    from ..methods import list_methods
    from ..options import unknown_option

    classes = list(dict.fromkeys([*_OPTION_CLASSES, *(m.options for m in list_methods())]))
    if key == "lower_bound":  # true/false (strict: "no" is false) or a known lower bound
        if _is_number(value):
            return None
        try:
            parse_bool(value, key)
        except UsageError:
            return (f"bad value {value!r} for lower_bound: expected true or false (also "
                    "yes/no, on/off) or a number")
        return None
    owners = [c for c in classes if key in c.names()]
    if not owners:
        known = [*(n for c in classes for n in c.names()), *BOUND_KEYS]
        return str(unknown_option(key, known))
    if value is None:
        return None
    try:
        owners[0].from_dict({key: value})
    except UsageError as exc:
        return str(exc)
    return None


def _option_sets(value, problems: list[str]) -> list[dict]:
    sets = value if isinstance(value, list) else [value]
    out = []
    for i, opts in enumerate(sets):
        where = "options" if not isinstance(value, list) else f"options[{i}]"
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            problems.append(f"{where}: expected a mapping of option: value, got {opts!r}")
            continue
        for key, val in opts.items():
            problem = _check_option(key, val)
            if problem:
                problems.append(f"{where}: {problem}" + (
                    " (per-model options go under the model entry)" if key in MODEL_KEYS
                    else ""))
        out.append({k: _job_value(k, v) for k, v in opts.items() if v is not None})
    return out or [{}]


def _bool_options() -> set[str]:
    """Method options declared boolean (built-in records and plugins' methods)."""
    from dataclasses import fields

    from ..methods import list_methods

    classes = {*_OPTION_CLASSES, *(m.options for m in list_methods())}
    return {f.name for c in classes for f in fields(c) if f.metadata.get("check") == "bool"}


def _job_value(key: str, value):
    """An option's value as the jobs get it: seconds as floats, booleans parsed strictly
    ("no" is False, never a truthy string). A bad value is already a listed problem."""
    if key in FLOAT_OPTIONS and _is_number(value):
        return float(value)
    try:
        if key == "lower_bound" and not _is_number(value):
            return parse_bool(value, key)
        if key in _bool_options():
            return parse_bool(value, key)
    except UsageError:
        pass
    return value


def _models(value, base: Path, problems: list[str]) -> list[ModelSpec]:
    if value is None or value == []:
        problems.append("models: missing or empty; list model paths, globs or directories")
        return []
    if not isinstance(value, list):
        value = [value]
    specs: list[ModelSpec] = []
    for i, entry in enumerate(value):
        where = f"models[{i}]"
        if isinstance(entry, (str, os.PathLike)):
            entry = {"path": str(entry)}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"{where}: expected a path or a mapping with a 'path' key")
            continue
        opts = {k: v for k, v in entry.items() if k not in ("path", "optional")}
        bad = [k for k in opts if k not in MODEL_KEYS]
        problems += [
            f"{where}: unknown key {k!r}; known keys: path, optional, {', '.join(MODEL_KEYS)}"
            for k in bad
        ]
        problems += _check_model_options(where, opts)
        files, why = _expand(entry["path"], base)
        optional = _flag(entry, "optional", where, problems)
        if why and not optional:
            problems.append(f"{where}: {why}")
        specs += [ModelSpec(f, _display(f), opts) for f in files]
    return specs


def _flag(entry: dict, key: str, where: str, problems: list[str]) -> bool:
    """A boolean entry key, parsed strictly ("no" is false; "maybe" is a listed problem)."""
    try:
        return bool(parse_bool(entry.get(key, False), key))
    except UsageError as exc:
        problems.append(f"{where}: {exc}")
        return False


def _check_model_options(where: str, opts: dict) -> list[str]:
    problems = []
    for key in BOOL_LOAD_KEYS:  # trust_pickle above all: "no" must never mean yes
        if key in opts:
            try:
                opts[key] = parse_bool(opts[key], key)
            except UsageError as exc:
                problems.append(f"{where}: {exc}")
    rows = opts.get("output_rows")
    if rows is not None and not (
        isinstance(rows, list) and rows and all(isinstance(r, int) and r >= 0 for r in rows)
    ):
        problems.append(f"{where}: output_rows must be a list of row indices, e.g. [7]")
    if "layout" in opts and opts["layout"] not in ("out-in", "in-out"):
        problems.append(f"{where}: layout must be out-in or in-out, got {opts['layout']!r}")
    shape = opts.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)
    ):
        problems.append(f"{where}: input_shape must be a list of sizes, e.g. [1, 28, 28]")
    return problems


def _expand(pattern: str, base: Path) -> tuple[list[Path], str]:
    """Files for a path, glob or directory, and why there are none (empty when fine)."""
    from ..importers import supported_suffixes

    suffixes = set(supported_suffixes())
    full = Path(os.path.expanduser(pattern))
    full = full if full.is_absolute() else base / full
    if glob.has_magic(pattern):
        try:  # a pattern may match, or merely walk, a huge tree: both are capped
            found = bounded_glob(full, MAX_GLOB_MATCHES, MAX_GLOB_VISITS)
        except (OSError, ValueError) as exc:
            return [], f"{pattern}: cannot search ({exc}); fix the pattern"
        except _TooManyMatches as exc:
            raise _TooManyMatches(f"{pattern}: {exc}") from None
        matches = found
        files = [p for p in matches if p.is_file() and p.suffix.lower() in suffixes]
        if not files:
            return [], (f"{pattern}: matches no model file ({', '.join(sorted(suffixes))}); "
                        "fix the pattern or mark the entry `optional: true`")
        return files, ""
    if full.is_dir():
        try:
            found = list(itertools.islice(full.iterdir(), MAX_GLOB_MATCHES + 1))
        except OSError as exc:
            return [], f"{pattern}: cannot list the directory ({exc.strerror})"
        if len(found) > MAX_GLOB_MATCHES:
            raise _TooManyMatches(f"{pattern}: the directory holds more than "
                                  f"{MAX_GLOB_MATCHES} entries; list the models or use a glob")
        files = sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes)
        return files, "" if files else f"{pattern}: directory holds no model file"
    if not full.exists():
        return [], (f"{pattern}: no such model file; check the path (relative paths are "
                    "relative to the manifest) or mark the entry `optional: true`")
    if full.suffix.lower() not in suffixes:
        return [], (f"{pattern}: unknown model format {full.suffix or '(no suffix)'!r}; "
                    f"supported: {', '.join(sorted(suffixes))}")
    from ..importers import MAX_MODEL_BYTES

    try:  # a FIFO or a device would hang the job planner (it hashes every model file)
        check_regular(full, "model file", max_bytes=MAX_MODEL_BYTES, error=UsageError)
    except UsageError as exc:
        return [], str(exc)
    return [full], ""


class _TooManyMatches(UsageError):
    """A glob or directory entry matched more than MAX_GLOB_MATCHES paths."""


def bounded_glob(pattern: Path, max_matches: int, max_visits: int) -> list[Path]:
    """The paths matching ``pattern`` (``*``, ``?``, ``[...]`` and recursive ``**``), sorted.

    Unlike :func:`glob.iglob`, the walk itself is bounded: it raises when more than
    ``max_matches`` paths match or more than ``max_visits`` directory entries were looked at,
    so ``/**/*.none`` fails in a moment instead of walking the disk. Symbolic links to
    folders are not followed by ``**``, and names starting with a dot match only a pattern
    that starts with one (as in :mod:`glob`).

    >>> bounded_glob(Path("/nonexistent/**/*.onnx"), 10, 100)
    []
    """
    import fnmatch

    parts = pattern.parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    found: dict[Path, None] = {}
    visits = 0

    def entries(folder: Path):
        nonlocal visits
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    visits += 1
                    if visits > max_visits:
                        raise _TooManyMatches(f"the search looked at more than {max_visits} "
                                              "entries without finishing; narrow the pattern")
                    yield entry
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            return

    def hit(path: Path) -> None:
        found[path] = None
        if len(found) > max_matches:
            raise _TooManyMatches(f"matches more than {max_matches} paths (the search "
                                  "stopped there); narrow the pattern")

    def visit(path: Path, rest: tuple[str, ...]) -> None:
        if not rest:
            hit(path)
            return
        head, tail = rest[0], rest[1:]
        if head == "**":
            visit(path, tail)
            for entry in entries(path):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    visit(Path(entry.path), rest)
                elif not tail:
                    hit(Path(entry.path))
        elif not glob.has_magic(head):
            if os.path.lexists(path / head):
                visit(path / head, tail)
        else:
            for entry in entries(path):
                if (fnmatch.fnmatchcase(entry.name, head)
                        and (head.startswith(".") or not entry.name.startswith("."))
                        and (not tail or entry.is_dir())):
                    visit(Path(entry.path), tail)

    visit(Path(*parts[:fixed]), parts[fixed:])
    return sorted(found)


def _display(path: Path) -> str:
    rel = os.path.relpath(path)
    far = os.path.join(os.pardir, os.pardir, os.pardir)
    return str(path) if rel.startswith(far) else rel
