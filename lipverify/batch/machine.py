"""A one-line description of the machine a job ran on (recorded with every result).

The same fields as results/make_compare.py's header, computed where the job runs (a Dask
worker may be another machine), plus the host name.
"""

from __future__ import annotations

import platform
import socket
from functools import lru_cache
from pathlib import Path

from ..numerics import cpu_count, physical_memory


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    return f", {physical_memory() / 2**30:.0f} GiB RAM"


@lru_cache(maxsize=1)
def describe() -> str:
    """CPU, cores, RAM, Python and numerical package versions, host.

    >>> "Python" in describe()
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    packages = ", ".join(f"{p} {ver(p)}" for p in ("numpy", "scipy", "cvxpy", "lipverify"))
    return (
        f"{_cpu()}, {cpu_count()} cores{_memory()}; Python {platform.python_version()}, "
        f"{packages}; host {socket.gethostname()}"
    )
