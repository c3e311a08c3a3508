"""Running one job where it is executed: one BLAS thread, a memory guard, a hard deadline,
and every failure turned into a recorded outcome instead of an exception.

This module imports nothing heavy at the top: a local worker sets its thread environment
(:func:`init_worker`) before numpy or torch are loaded.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

#: Environment for one solver/BLAS thread per job, so parallel jobs do not fight over cores.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
#: With a time limit T, a job still running after HARD_FACTOR * T + HARD_GRACE seconds is
#: stopped (the solver limit T is soft: loading and the §8 check run after it).
HARD_FACTOR, HARD_GRACE = 2.0, 120.0

_THREAD_LIMIT = None  # keeps the worker-wide threadpool limit alive


class JobTimeout(BaseException):
    """The hard deadline passed (a BaseException, so no ``except Exception`` swallows it)."""


def init_worker(memory_limit_bytes: int | None = None) -> None:
    """Initializer of a local worker process: one thread, an address-space cap, no Ctrl-C."""
    global _THREAD_LIMIT
    os.environ.update(SINGLE_THREAD_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if memory_limit_bytes:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_limit_bytes if hard == resource.RLIM_INFINITY else min(hard,
                                                                             memory_limit_bytes)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    from threadpoolctl import threadpool_limits

    _THREAD_LIMIT = threadpool_limits(limits=1)


def hard_timeout(options: dict) -> float | None:
    limit = options.get("time_limit")
    return None if limit is None else HARD_FACTOR * float(limit) + HARD_GRACE


@contextmanager
def _deadline(seconds: float | None):
    """Raise :class:`JobTimeout` after ``seconds`` (main thread of a process only)."""
    if (
        seconds is None
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def expire(signum, frame):
        raise JobTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _bound(spec: dict[str, Any]) -> str:
    import lipverify

    from .manifest import import_plugins

    import_plugins(spec.get("plugins", ()))
    opts = dict(spec["options"])
    rows = opts.pop("output_rows", None)
    lower = opts.pop("lower_bound", False)
    robust = opts.pop("robustness", None)
    result = lipverify.bound(
        spec["path"], method=spec["method"], norm=spec["norm"], output_rows=rows,
        lower_bound=lower, **opts,
    )
    if robust is not None and result.kind == "upper":
        result = _with_robustness(result, spec["path"], robust, opts)
    return result.to_json()


def _with_robustness(result, path: str, robust: dict, opts: dict):
    """``result`` with its certified robust accuracy on the manifest's data in ``details``."""
    from dataclasses import replace

    from ..api import split_options
    from ..importers import load
    from ..robustness import certified_robustness, load_dataset
    from ..runtime.files import shown

    net = load(path, **split_options(opts)[0])
    x, y = load_dataset(robust["data"], net.input_dim, net.output_dim)
    rep = certified_robustness(net, x, y, robust["eps"], method=result.method,
                               pairwise=robust["pairs"], pair_solve=robust["pair_solve"],
                               local=robust["local"],
                               domain=tuple(robust["domain"]) if robust["domain"] else None,
                               time_limit=opts.get("time_limit"), global_result=result)
    summary = {"data": shown(robust["data"]), "samples": len(x),
               "clean_accuracy": rep.clean_accuracy, "certified_accuracy": rep.table()}
    return replace(result, details={**result.details, "robustness": summary})


def failed(key: str, error: str, exit_code: int, started_at: str | None = None) -> dict[str, Any]:
    """The outcome of a job that could not report one itself (its process died, ...)."""
    return {"key": key, "status": "error", "result": None, "error": error,
            "exit_code": exit_code, "started_at": started_at or _now(), "finished_at": _now(),
            "machine": None, "pid": None}


def run_job(spec: dict[str, Any], single_thread: bool = True) -> dict[str, Any]:
    """Run one job spec (see :meth:`Job.spec`) and return its outcome as plain data.

    Never raises for a failing bound: the error class, message and exit code go into the
    outcome, so the batch records it and goes on.
    """
    from threadpoolctl import threadpool_limits

    from ..errors import LipverifyError
    from .machine import describe

    started = _now()
    outcome: dict[str, Any] = {"key": spec["key"], "status": "error", "result": None,
                               "error": None, "exit_code": None}
    limit = hard_timeout(spec["options"])
    try:
        with (
            warnings.catch_warnings(),
            _deadline(limit),
            threadpool_limits(limits=1) if single_thread else nullcontext(),
        ):
            warnings.simplefilter("ignore")  # a worker's stderr is not the user's terminal
            outcome.update(status="ok", result=_bound(spec))
    except LipverifyError as exc:
        outcome.update(error=f"{type(exc).__name__}: {exc}", exit_code=exc.exit_code)
    except MemoryError as exc:
        outcome.update(
            error=f"MemoryError: out of memory ({exc or 'allocation failed'}); raise "
            "--memory-limit or run fewer jobs at once (--jobs)",
            exit_code=5,
        )
    except JobTimeout:
        outcome.update(
            error=f"JobTimeout: still running {limit:.0f} s after the start (time limit "
            f"{spec['options']['time_limit']:g} s); the job was stopped",
            exit_code=5,
        )
    except Exception as exc:  # noqa: BLE001 - an internal error in one job must not stop a batch
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        outcome.update(error=f"internal error {type(exc).__name__}: {exc}\n{tail}", exit_code=1)
    outcome.update(started_at=started, finished_at=_now(), machine=describe(), pid=os.getpid())
    return outcome
