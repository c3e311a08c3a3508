"""Batch comparisons: manifests, a resumable results store, local and Dask execution, plots.

>>> from lipverify.batch import list_executors
>>> [e.name for e in list_executors()]
['inline', 'local', 'dask']
"""

from .execute import ExecSettings, get_executor, list_executors, register_executor
from .export import export, table_rows, to_csv, to_markdown
from .jobs import Job, Plan, canonical_json, job_key, parse_shard, plan_jobs, select_shard
from .manifest import Manifest, ModelSpec, build_manifest, load_manifest, manifest_from_paths
from .runner import BatchEvent, BatchSummary, run_batch
from .store import DEFAULT_DB, JobRecord, ResultsStore, ResultsStoreError


def plot_results(records, out="results"):
    """Write the comparison plots (see :mod:`lipverify.batch.plots`); imports matplotlib."""
    from .plots import plot_results as _plot

    return _plot(records, out)


__all__ = [
    "DEFAULT_DB",
    "BatchEvent",
    "BatchSummary",
    "ExecSettings",
    "Job",
    "JobRecord",
    "Manifest",
    "ModelSpec",
    "Plan",
    "ResultsStore",
    "ResultsStoreError",
    "build_manifest",
    "canonical_json",
    "export",
    "get_executor",
    "job_key",
    "list_executors",
    "load_manifest",
    "manifest_from_paths",
    "parse_shard",
    "plan_jobs",
    "plot_results",
    "register_executor",
    "run_batch",
    "select_shard",
    "table_rows",
    "to_csv",
    "to_markdown",
]
