"""Executors registry: name -> a function that runs jobs and yields ``(job, outcome)`` pairs
as they finish (in any order). Outcomes are plain dicts from :func:`worker.run_job`.

* ``local``: a process pool of ``jobs`` workers, each with one BLAS thread and an
  address-space cap; a worker that dies (out of memory, native crash) costs only its job.
* ``dask``: the same job function on a Dask distributed cluster (``scheduler`` address).
* ``inline``: in this process, one job after another (debugging; no memory guard).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import UsageError
from ..numerics import physical_memory
from .jobs import Job
from .worker import SINGLE_THREAD_ENV, failed, init_worker, run_job

Results = Iterator[tuple[Job, dict]]


@dataclass(frozen=True)
class ExecSettings:
    """How to run: worker count (local), scheduler address (dask), per-worker memory cap."""

    jobs: int = 1
    scheduler: str | None = None
    memory_limit_gb: float | None = None

    @property
    def memory_limit_bytes(self) -> int | None:
        return None if self.memory_limit_gb is None else int(self.memory_limit_gb * 2**30)


@dataclass(frozen=True)
class ExecutorInfo:
    name: str
    run: Callable[[Sequence[Job], ExecSettings], Results]
    summary: str
    #: None when usable, else why not and what to install.
    unavailable: Callable[[], str | None] = lambda: None


EXECUTORS: dict[str, ExecutorInfo] = {}


def register_executor(name: str, summary: str, unavailable: Callable[[], str | None] = None):
    def deco(fn):
        EXECUTORS[name] = ExecutorInfo(name, fn, summary, unavailable or (lambda: None))
        return fn

    return deco


def get_executor(name: str) -> ExecutorInfo:
    """The executor called ``name``; UsageError when unknown or not installed.

    >>> get_executor("local").name
    'local'
    """
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    why = EXECUTORS[name].unavailable()
    if why:
        raise UsageError(f"executor {name} is not available: {why}")
    return EXECUTORS[name]


def list_executors() -> list[ExecutorInfo]:
    return list(EXECUTORS.values())


def default_memory_limit_gb(jobs: int) -> float | None:
    """Physical memory shared by the workers, at least 2 GiB each."""
    return max(2.0, 0.9 * physical_memory() / 2**30 / max(jobs, 1))


# ---------------------------------------------------------------------------------- inline
@register_executor("inline", "in this process, one job after another (debugging)")
def run_inline(jobs: Sequence[Job], settings: ExecSettings) -> Results:
    for job in jobs:
        yield job, run_job(job.spec())


# ---------------------------------------------------------------------------------- local
DIED = (
    "the worker process died while running this job (killed by the system, e.g. out of "
    "memory, or a crash in native code); try --memory-limit, fewer --jobs, or another method"
)


@contextmanager
def _single_thread_environment():
    """Workers start with one-thread BLAS/OpenMP variables (set before numpy loads)."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pool(workers: int, settings: ExecSettings):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(settings.memory_limit_bytes,),
    )


def _stop(pool) -> None:
    """Shut a pool down now, ending workers still busy (Ctrl-C, or a store error)."""
    procs = list(getattr(pool, "_processes", {}).values())  # no public API before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()


def _run_pool(jobs: deque, workers: int, settings: ExecSettings, crashed: list) -> Results:
    """Run ``jobs`` with at most ``workers`` in flight, so a broken pool names its suspects:
    the jobs in flight when a worker died go to ``crashed`` and the pool stops."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = _pool(workers, settings)
    running: dict = {}
    try:
        while jobs or running:
            while jobs and len(running) < workers:
                job = jobs.popleft()
                running[pool.submit(run_job, job.spec())] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = []
            for fut in done:
                job = running.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):
                    broken.append(job)
                elif exc is not None:  # the job function could not even start
                    yield job, failed(job.key, f"internal error {type(exc).__name__}: {exc}", 1)
                else:
                    yield job, fut.result()
            if broken:  # every job still in flight went down with the pool
                crashed += [*broken, *running.values()]
                return
    finally:
        if running:  # interrupted (Ctrl-C, a store error): end the busy workers now
            _stop(pool)
        else:
            pool.shutdown(wait=True)


@register_executor("local", "process pool on this machine (--jobs N, one BLAS thread each)")
def run_local(jobs: Sequence[Job], settings: ExecSettings) -> Results:
    with _single_thread_environment():
        yield from _run_all(deque(jobs), max(1, settings.jobs), settings)


def _run_all(pending: deque, workers: int, settings: ExecSettings) -> Results:
    """Run ``pending``, replacing a pool that broke. With one worker the job in flight is the
    one that died; with several, the jobs in flight are rerun one at a time at the end."""
    suspects: list[Job] = []
    while pending:
        crashed: list[Job] = []
        yield from _run_pool(pending, workers, settings, crashed)
        if workers == 1:
            for dead in crashed:
                yield dead, failed(dead.key, DIED, 5)
        else:
            suspects += crashed
    if suspects:
        yield from _run_all(deque(suspects), 1, settings)


# ---------------------------------------------------------------------------------- dask
def _dask_missing() -> str | None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "dask.distributed is not installed; pip install 'lipverify[dask]'"
    return None


@register_executor(
    "dask", "Dask distributed cluster (--scheduler tcp://host:8786)", _dask_missing
)
def run_dask(jobs: Sequence[Job], settings: ExecSettings) -> Results:
    from distributed import Client, as_completed

    if not settings.scheduler:
        raise UsageError(
            "--executor dask needs --scheduler ADDRESS (e.g. tcp://host:8786): start one with "
            "`dask scheduler` and `dask worker ADDRESS --nthreads 1`, or dask-jobqueue on SLURM"
        )
    try:
        client = Client(settings.scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {settings.scheduler} ({exc}); check the "
            "address and that `dask scheduler` is running"
        ) from None
    futures = {}
    try:
        for job in jobs:
            fut = client.submit(run_job, job.spec(), pure=False,
                                key=f"lipverify-{job.method}-{job.key[:16]}")
            futures[fut] = job
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connection, ...
                outcome = failed(job.key, f"dask: {type(exc).__name__}: {exc}", 5)
            yield job, outcome
    finally:
        client.cancel(list(futures))
        client.close()
