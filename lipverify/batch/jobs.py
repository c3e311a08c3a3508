"""Jobs: the cross product models x option sets x norms x methods, each with a stable key.

The key is the sha256 of (model file sha256, method, norm, canonical JSON of the options,
lipverify version): the same model under another name or path is the same job, and a new
lipverify version redoes everything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..api import lipverify_version
from ..errors import UsageError
from .manifest import Manifest


@dataclass(frozen=True)
class Job:
    """One bound to compute: a model file, a method, a norm and the options."""

    key: str
    model: str  # as shown in tables
    path: str  # absolute path the worker opens
    model_sha256: str
    method: str
    norm: str
    options: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    version: str = ""  # the lipverify version in the key

    @property
    def options_json(self) -> str:
        return canonical_json(self.options)

    def spec(self) -> dict[str, Any]:
        """Plain data for a worker process or a Dask worker (no pickled objects)."""
        return {
            "key": self.key,
            "path": self.path,
            "method": self.method,
            "norm": self.norm,
            "options": dict(self.options),
            "plugins": list(self.plugins),
        }


@dataclass(frozen=True)
class Plan:
    """The jobs of a manifest, and notes on combinations left out (and why)."""

    jobs: tuple[Job, ...]
    notes: tuple[str, ...] = ()


def canonical_json(obj) -> str:
    """Key-sorted, whitespace-free JSON: equal options give equal text.

    >>> canonical_json({"b": 1, "a": [1, 2]})
    '{"a":[1,2],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def job_key(model_sha256: str, method: str, norm: str, options: dict, version: str) -> str:
    """sha256 of everything that determines a result.

    >>> k = job_key("ab" * 32, "naive", "l2", {"seed": 1, "time_limit": 5.0}, "0.1.0")
    >>> k == job_key("ab" * 32, "naive", "l2", {"time_limit": 5.0, "seed": 1}, "0.1.0"), len(k)
    (True, 64)
    """
    payload = canonical_json(
        {"model": model_sha256, "method": method, "norm": norm, "options": options,
         "version": version}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    import os

    st = os.stat(path)
    cache_key = (str(path), st.st_size, st.st_mtime_ns)
    if cache_key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[cache_key] = h.hexdigest()
    return _SHA_CACHE[cache_key]


def plan_jobs(manifest: Manifest, version: str | None = None) -> Plan:
    """Every job of ``manifest`` in a stable order (model, option set, norm, method).

    Methods that do not support a norm are left out with a note; a model listed twice
    (same file content, same options) becomes one job.
    """
    from ..methods import get_method

    version = version or lipverify_version()
    jobs: dict[str, Job] = {}
    notes: list[str] = []
    robust = manifest.robustness
    if robust is not None:  # the data's content, not its path, is part of the job
        robust = {**robust, "data_sha256": file_sha256(robust["data"])}
    for spec in manifest.models:
        sha = file_sha256(str(spec.path))
        for opts in manifest.option_sets:
            for norm in manifest.norms:
                options = {**opts, **spec.options}
                if robust is not None and norm == "l2":
                    options["robustness"] = robust
                for method in manifest.methods:
                    if norm not in get_method(method).norms:
                        continue
                    key = job_key(sha, method, norm, options, version)
                    jobs.setdefault(key, Job(key, spec.display, str(spec.path), sha, method,
                                             norm, options, manifest.plugins, version))
    for norm in manifest.norms:
        left_out = [m for m in manifest.methods if norm not in get_method(m).norms]
        if left_out:
            notes.append(f"{', '.join(left_out)}: no {norm} support, left out for {norm}")
    return Plan(tuple(jobs.values()), tuple(notes))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` (0 <= i < N, e.g. ``$SLURM_ARRAY_TASK_ID/10``) -> (i, N).

    >>> parse_shard("2/10")
    (2, 10)
    """
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UsageError(f"bad shard {text!r}: write i/N, e.g. 0/4 (i counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"bad shard {text!r}: need 0 <= i < N, e.g. 0/4 ... 3/4")
    return i, n


def select_shard(jobs, shard: tuple[int, int] | None) -> list[Job]:
    """The jobs of shard ``(i, N)``: every N-th job by key, so shards are balanced, disjoint,
    cover the batch, and do not depend on the order models were listed in."""
    if shard is None:
        return list(jobs)
    i, n = shard
    mine = {j.key for j in sorted(jobs, key=lambda j: j.key)[i::n]}
    return [j for j in jobs if j.key in mine]
