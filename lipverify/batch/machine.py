"""A one-line description of the machine a job ran on (recorded with every result).

The same fields as results/make_compare.py's header, computed where the job runs (a Dask
worker may be another machine), plus the host name.
"""

from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache
from pathlib import Path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return ""


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
        f"{_cpu()}, {os.cpu_count()} cores{_memory()}; Python {platform.python_version()}, "
        f"{packages}; host {socket.gethostname()}"
    )
