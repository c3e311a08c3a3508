"""Run a batch: plan the jobs, skip the finished ones, execute the rest, store each outcome
the moment it arrives. Progress is reported through an optional callback (a library never
prints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .execute import ExecSettings, default_memory_limit_gb, get_executor
from .jobs import Job, parse_shard, plan_jobs, select_shard
from .manifest import Manifest
from .store import DEFAULT_DB, JobRecord, ResultsStore


@dataclass(frozen=True)
class BatchEvent:
    """``start`` (``total`` jobs to run, ``skipped`` already stored) or ``finished`` (one
    job's ``record``, ``done`` of ``total``)."""

    kind: str
    total: int
    done: int = 0
    skipped: int = 0
    job: Job | None = None
    record: JobRecord | None = None


@dataclass(frozen=True)
class BatchSummary:
    planned: int  # jobs in this batch (or shard)
    skipped: int  # already in the store
    ok: int
    errors: int
    notes: tuple[str, ...]
    db: str

    @property
    def ran(self) -> int:
        return self.ok + self.errors


def run_batch(
    manifest: Manifest,
    db: str | Path = DEFAULT_DB,
    *,
    executor: str = "local",
    jobs: int = 1,
    scheduler: str | None = None,
    shard: str | tuple[int, int] | None = None,
    force: bool = False,
    retry_errors: bool = False,
    memory_limit_gb: float | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
) -> BatchSummary:
    """Run every job of ``manifest`` not yet in the store ``db``.

    ``force`` redoes finished jobs, ``retry_errors`` redoes only the failed ones; ``shard``
    ``"i/N"`` runs the i-th of N disjoint parts (SLURM arrays). The local executor caps
    each worker's address space at ``memory_limit_gb`` (manifest value, else the physical
    memory shared by the workers).
    """
    exe = get_executor(executor)
    plan = plan_jobs(manifest)
    selected = select_shard(plan.jobs, parse_shard(shard) if isinstance(shard, str) else shard)
    memory = memory_limit_gb or manifest.memory_limit_gb or default_memory_limit_gb(jobs)
    settings = ExecSettings(jobs=max(1, jobs), scheduler=scheduler, memory_limit_gb=memory)
    notify = on_event or (lambda event: None)
    ok = errors = 0
    with ResultsStore(db) as store:
        store.check_writable()  # a locked or read-only database fails before any job runs
        done = set() if force else store.done_keys("ok" if retry_errors else None)
        todo = [j for j in selected if j.key not in done]
        notify(BatchEvent("start", total=len(todo), skipped=len(selected) - len(todo)))
        for job, outcome in exe.run(todo, settings):
            record = store.put(job, outcome)
            ok, errors = ok + (record.status == "ok"), errors + (record.status != "ok")
            notify(BatchEvent("finished", total=len(todo), done=ok + errors, job=job,
                              record=record))
    return BatchSummary(len(selected), len(selected) - len(todo), ok, errors, plan.notes,
                        str(db))
