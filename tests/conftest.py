"""Shared fixtures. Tests that need ../shared/models skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

# One BLAS / OpenMP thread, before numpy or torch load: on a 2-core machine shared with other
# work, threaded BLAS spins and one test can take 10x longer (`make test` sets the same).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("LIPVERIFY_SHARED_MODELS", ROOT.parent / "shared" / "models"))
SAMPLE_MODELS = ROOT / "models"


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/models; skips the calling test when it is missing."""
    path = SHARED_MODELS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared model {path} not available")
    return path


@pytest.fixture
def shared():
    return shared_path
