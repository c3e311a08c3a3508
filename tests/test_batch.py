"""Batch comparisons: manifests, job keys, the resumable store (SIGKILL), executors, exports,
plots and the CLI. Tiny networks (saved as .npz in tmp dirs) and cheap methods only."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT, SAMPLE_MODELS
from lipverify_cli.main import main

from lipverify.batch import (
    ResultsStore,
    ResultsStoreError,
    load_manifest,
    manifest_from_paths,
    parse_shard,
    plan_jobs,
    plot_results,
    run_batch,
    select_shard,
    to_csv,
    to_markdown,
)
from lipverify.batch.jobs import job_key
from lipverify.errors import UsageError
from lipverify.methods import METHODS

CHEAP = ["naive", "gershgorin", "ldlt-fast", "lower"]

#: A test-only plugin: a method that logs each start, sleeps, and can kill its own process.
PLUGIN = '''
import os, signal, time
from lipverify.methods import register_method
from lipverify.results import MethodOutput

@register_method("test-sleep", norms=("l2", "linf"), kind="estimate", summary="tests only")
def test_sleep(network, *, norm="l2", **_):
    with open(os.environ["LIPVERIFY_TEST_LOG"], "a") as fh:
        fh.write(network.name + "\\n")
    if os.environ.get("LIPVERIFY_TEST_CRASH") == network.name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LIPVERIFY_TEST_HOG") == network.name:
        import numpy
        numpy.empty(6 * 2**30, dtype=numpy.uint8)  # address space only: never touched
    time.sleep(float(os.environ.get("LIPVERIFY_TEST_SLEEP", "0")))
    return MethodOutput(bound=1.0, certified=False)
'''


def tiny(path: Path, seed: int, widths=(4, 8, 3)) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        arrays[f"w{k}"] = rng.normal(size=(n_out, n_in))
        arrays[f"b{k}"] = rng.normal(size=n_out)
    np.savez(path, **arrays)
    return path


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def write_manifest(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def by_key(db) -> dict:
    with ResultsStore(db, create=False) as store:
        return {r.key: r for r in store.records()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    tiny(d / "net_a.npz", 0)
    tiny(d / "net_b.npz", 1, widths=(3, 6, 6, 2))
    return d


@pytest.fixture(scope="module")
def manifest(models) -> Path:
    return write_manifest(
        models / "batch.yaml",
        models=["net_a.npz", {"path": "net_b.npz", "output_rows": [1]},
                str(SAMPLE_MODELS / "digits_mlp_relu.onnx")],
        methods=CHEAP,
        norms=["l2", "linf"],
    )


@pytest.fixture(scope="module")
def local_db(manifest, tmp_path_factory) -> Path:
    """The reference batch, run once on the local process pool with two workers."""
    db = tmp_path_factory.mktemp("local") / "results.db"
    summary = run_batch(load_manifest(manifest), db, executor="local", jobs=2)
    assert summary.errors == 0 and summary.ok == summary.planned == 21
    return db


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The test-sleep plugin importable here and in spawned workers; unregistered after."""
    (tmp_path / "lv_test_plugin.py").write_text(PLUGIN)
    log = tmp_path / "starts.log"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get(
        "PYTHONPATH", "")]))
    monkeypatch.setenv("LIPVERIFY_TEST_LOG", str(log))
    yield log
    METHODS.pop("test-sleep", None)
    sys.modules.pop("lv_test_plugin", None)


# ---------------------------------------------------------------------------- manifests
def test_manifest_lists_every_problem_before_running(models, tmp_path):
    bad = write_manifest(
        tmp_path / "bad.yaml",
        models=[str(models / "net_a.npz"), "missing.onnx", {"path": "nothing/*.onnx"},
                {"path": str(models / "net_b.npz"), "output_rows": "seven", "colour": 1}],
        methods=["naive", "lipsdp-nueron"],
        norms=["l2", "l3"],
        options={"time_limit": -1, "timelimit": 5},
        jobs=4,
    )
    with pytest.raises(UsageError) as info:
        load_manifest(bad)
    msg = str(info.value)
    for text in ("missing.onnx: no such model file", "nothing/*.onnx: matches no model file",
                 "output_rows must be a list", "unknown key 'colour'", "'lipsdp-nueron'",
                 "unknown norm 'l3'", "bad value -1 for time_limit", "unknown option "
                 "'timelimit'", "unknown key 'jobs'"):
        assert text in msg, text
    assert "9 problem(s)" in msg and "nothing was run" in msg
    res = CliRunner().invoke(main, ["batch", str(bad), "--db", str(tmp_path / "r.db")])
    assert res.exit_code == 2 and "9 problem(s)" in flat(res.output)
    assert not (tmp_path / "r.db").exists()  # rejected before any job (or database)


def test_manifest_globs_directories_and_optional_entries(models, tmp_path):
    m = write_manifest(
        tmp_path / "m.yaml",
        models=[f"{models}/net_*.npz", {"path": "absent/*.onnx", "optional": True},
                {"path": str(models), "activation": "tanh"}],
        methods="naive,lower",
        options=[{"time_limit": 5}, {"time_limit": 10.0, "seed": 1}],
    )
    manifest = load_manifest(m)
    assert [s.path.name for s in manifest.models] == ["net_a.npz", "net_b.npz"] * 2
    assert manifest.models[2].options == {"activation": "tanh"}
    assert manifest.option_sets == ({"time_limit": 5.0}, {"time_limit": 10.0, "seed": 1})
    assert len(plan_jobs(manifest).jobs) == 4 * 2 * 2  # 2 files x 2 load options x ...


def test_job_keys_are_stable_and_complete(models, tmp_path):
    (tmp_path / "copy.npz").write_bytes((models / "net_a.npz").read_bytes())
    m = manifest_from_paths([models / "net_a.npz", tmp_path / "copy.npz"], ["naive", "lower"],
                            ["l2", "linf"], {"time_limit": 5.0})
    plan = plan_jobs(m)
    assert len(plan.jobs) == 4  # the copy has the same content: the same jobs
    again = plan_jobs(manifest_from_paths([models / "net_a.npz"], ["naive", "lower"],
                                          ["l2", "linf"], {"time_limit": 5.0}))
    assert [j.key for j in plan.jobs] == [j.key for j in again.jobs]
    base = ("a" * 64, "naive", "l2", {"time_limit": 5.0}, "0.1.0")
    variants = [("b" * 64, *base[1:]), (base[0], "lower", *base[2:]),
                (*base[:2], "linf", *base[3:]), (*base[:3], {"time_limit": 6.0}, base[4]),
                (*base[:4], "0.2.0")]
    keys = {job_key(*base), *(job_key(*v) for v in variants)}
    assert len(keys) == 6  # model, method, norm, options and version all count
    shards = [select_shard(plan.jobs, parse_shard(f"{i}/3")) for i in range(3)]
    assert sorted(j.key for s in shards for j in s) == sorted(j.key for j in plan.jobs)
    with pytest.raises(UsageError, match="0 <= i < N"):
        parse_shard("3/3")
    notes = plan_jobs(manifest_from_paths([models / "net_a.npz"], ["ldlt-fast"],
                                          ["l2", "linf"])).notes
    assert notes == ("ldlt-fast: no linf support, left out for linf",)


# ---------------------------------------------------------------------------- the store
def test_rerun_skips_finished_jobs_and_force_redoes(manifest, tmp_path):
    db = tmp_path / "r.db"
    m = load_manifest(manifest, methods=["naive", "gershgorin"], norms=["l2"])
    first = run_batch(m, db, executor="inline")
    assert (first.ok, first.skipped) == (6, 0)
    before = by_key(db)
    second = run_batch(m, db, executor="inline")
    assert (second.ran, second.skipped) == (0, 6)
    assert by_key(db) == before  # nothing rewritten
    forced = run_batch(m, db, executor="inline", force=True)
    assert (forced.ok, forced.skipped) == (6, 0)
    after = by_key(db)
    assert after.keys() == before.keys()
    assert all(after[k].finished_at > before[k].finished_at for k in before)
    assert all(after[k].result.bound == before[k].result.bound for k in before)


def test_failures_are_recorded_and_the_batch_goes_on(models, tmp_path, plugin, monkeypatch):
    """Unreadable model, refused method, a job over the memory cap, and a worker killed
    mid-job with two in flight: each is recorded, every other job finishes."""
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    tiny(tmp_path / "crash.npz", 5)
    tiny(tmp_path / "hog.npz", 6)
    monkeypatch.setenv("LIPVERIFY_TEST_CRASH", "crash")
    monkeypatch.setenv("LIPVERIFY_TEST_HOG", "hog")
    m = write_manifest(
        tmp_path / "m.yaml",
        models=[str(models / "net_a.npz"), "corrupt.npz", "hog.npz", "crash.npz"],
        methods=["naive", "lipsdp-network", "test-sleep"],
        plugins=["lv_test_plugin"],
        memory_limit_gb=3,
    )
    db = tmp_path / "r.db"
    summary = run_batch(load_manifest(m), db, executor="local", jobs=2)
    assert (summary.ok, summary.errors) == (4, 8)
    records = {(Path(r.model).stem, r.method): r for r in by_key(db).values()}
    for model in ("net_a", "hog", "crash"):
        assert records[model, "naive"].status == "ok"
        assert records[model, "lipsdp-network"].exit_code == 4
    assert records["net_a", "test-sleep"].status == "ok"
    assert records["corrupt", "naive"].exit_code == 3
    assert "ModelLoadError" in records["corrupt", "naive"].error
    assert records["hog", "test-sleep"].error.startswith("MemoryError: out of memory")
    assert "worker process died" in records["crash", "test-sleep"].error
    # --retry-errors redoes only the failures
    monkeypatch.delenv("LIPVERIFY_TEST_CRASH")
    monkeypatch.delenv("LIPVERIFY_TEST_HOG")
    again = run_batch(load_manifest(m), db, executor="inline", retry_errors=True)
    assert (again.skipped, again.ok, again.errors) == (4, 2, 6)


def test_sigkill_loses_only_jobs_in_flight(models, tmp_path, plugin):
    """Kill a running batch with SIGKILL; the re-run keeps every stored job, repeats none."""
    names = [f"m{i}" for i in range(8)]
    for i, name in enumerate(names):
        tiny(tmp_path / f"{name}.npz", 10 + i)
    manifest = write_manifest(tmp_path / "m.yaml", models=[f"{n}.npz" for n in names],
                              methods=["test-sleep"], plugins=["lv_test_plugin"])
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "lipverify_cli.main", "batch", str(manifest), "--db", str(db)]
    env = {**os.environ, "LIPVERIFY_TEST_SLEEP": "0.5"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while _stored(db) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no job stored within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker, mid-job
        proc.wait()
    kept = by_key(db)
    assert 1 <= len(kept) < len(names)
    started_before = plugin.read_text().split()
    rerun = subprocess.run(cmd, env={**env, "LIPVERIFY_TEST_SLEEP": "0"}, capture_output=True,
                           timeout=180)
    assert rerun.returncode == 0, rerun.stderr.decode()
    final = by_key(db)
    assert len(final) == len(names)
    assert all(final[k] == kept[k] for k in kept)  # finished jobs untouched
    started_after = plugin.read_text().split()[len(started_before):]
    done_first = {Path(r.model).stem for r in kept.values()}
    assert sorted(started_after) == sorted(set(names) - done_first)  # each remaining job once


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_corrupt_foreign_and_locked_databases_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    content = garbage.read_bytes()
    with pytest.raises(ResultsStoreError, match="corrupt or another kind of file"):
        ResultsStore(garbage)
    assert garbage.read_bytes() == content  # nothing overwritten
    res = CliRunner().invoke(main, ["results", "show", "--db", str(garbage)])
    assert res.exit_code == 2 and "move it aside" in flat(res.output)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ResultsStoreError, match="not a lipverify results store"):
        ResultsStore(foreign)
    with pytest.raises(ResultsStoreError, match="no results database here"):
        ResultsStore(tmp_path / "absent.db", create=False)
    db = tmp_path / "ok.db"
    ResultsStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ResultsStoreError, match="locked by another process"):
            ResultsStore(db, timeout=0.2).check_writable()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# ---------------------------------------------------------------------------- executors
def test_dask_local_cluster_gives_identical_results(manifest, local_db, tmp_path):
    distributed = pytest.importorskip("distributed")
    db = tmp_path / "dask.db"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        summary = run_batch(load_manifest(manifest), db, executor="dask",
                            scheduler=cluster.scheduler_address)
    assert summary.errors == 0
    local, dask = by_key(local_db), by_key(db)
    assert local.keys() == dask.keys()
    for key, ref in local.items():
        got = dask[key]
        assert (got.model, got.method, got.norm, got.status) == (ref.model, ref.method,
                                                                  ref.norm, ref.status)
        a, b = ref.result, got.result
        assert (b.bound, b.certified, b.kind, b.status, b.layers) == (
            a.bound, a.certified, a.kind, a.status, a.layers), (ref.model, ref.method)


def test_dask_without_scheduler_says_what_to_do(manifest, tmp_path):
    with pytest.raises(UsageError, match="needs --scheduler"):
        run_batch(load_manifest(manifest), tmp_path / "r.db", executor="dask")


# ---------------------------------------------------------------------------- outputs
def test_export_csv_and_markdown(local_db):
    with ResultsStore(local_db, create=False) as store:
        records = store.records()
    text = to_csv(records)
    assert text.startswith("# machine: ")
    rows = list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))
    assert len(rows) == 21
    relu = {r["method"]: r for r in rows if "digits_mlp_relu" in r["model"] and
            r["norm"] == "l2"}
    assert relu["naive"]["certified"] == "True" and relu["lower"]["kind"] == "lower"
    assert float(relu["ldlt-fast"]["tightness"]) >= 1
    assert float(relu["lower"]["bound"]) <= float(relu["ldlt-fast"]["bound"])
    assert {r["rows"] for r in rows if "net_b" in r["model"]} == {"1"}
    md = to_markdown(records)
    assert "Machine: " in md and md.count("\n| ") == 22  # header + 21 rows


def test_cli_batch_show_export_plot_merge(models, tmp_path):
    runner = CliRunner()
    db = tmp_path / "r.db"
    args = ["batch", str(models / "net_a.npz"), str(models / "net_b.npz"), "--methods",
            "naive,lower", "--db", str(db), "--executor", "inline", "--time-limit", "30"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "4 ok, 0 failed, 0 skipped" in flat(res.stderr) and "✓" in res.stderr
    res = runner.invoke(main, args)
    assert "0 ok, 0 failed, 4 skipped" in flat(res.stderr)
    res = runner.invoke(main, ["results", "show", "--db", str(db)])
    assert res.exit_code == 0 and "net_a" in res.stdout and "lower" in res.stdout
    md = tmp_path / "out" / "batch.md"
    res = runner.invoke(main, ["results", "export", "--db", str(db), "--format", "md", "-o",
                               str(md)])
    assert res.exit_code == 0 and md.read_text().count("\n| ") == 5
    res = runner.invoke(main, ["results", "export", "--db", str(db)])
    assert res.stdout.startswith("# machine") and res.stdout.count("net_") == 4
    res = runner.invoke(main, ["results", "plot", "--db", str(db), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in ("bounds", "tightness", "time"):
        for fmt in ("png", "pdf"):
            assert (tmp_path / f"batch-{name}-l2.{fmt}").stat().st_size > 1000
    # a second shard database merged into a new one
    shard = tmp_path / "shard.db"
    res = runner.invoke(main, ["batch", str(models / "net_a.npz"), "--methods", "gershgorin",
                               "--db", str(shard), "--executor", "inline", "--shard", "0/1"])
    assert res.exit_code == 0, res.output
    merged = tmp_path / "merged.db"
    res = runner.invoke(main, ["results", "merge", str(db), str(shard), "--db", str(merged)])
    assert res.exit_code == 0 and len(by_key(merged)) == 5
    res = runner.invoke(main, ["results", "show", "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 2 and "run `lipverify batch` first" in flat(res.output)


def test_plots_per_norm(local_db, tmp_path):
    with ResultsStore(local_db, create=False) as store:
        written = plot_results(store.records(), tmp_path / "plots")
    assert len(written) == 2 * 3 * 2  # norms x plots x formats
    assert all(p.stat().st_size > 1000 for p in written)


def test_make_compare_manifest_is_valid():
    """The manifest `make compare` runs (shared models optional)."""
    manifest = load_manifest(ROOT / "results" / "batch.yaml")
    assert {s.path.name for s in manifest.models} >= {"digits_mlp_relu.onnx", "digits_cnn.onnx"}


def test_library_does_not_print(models, tmp_path, capsys):
    run_batch(manifest_from_paths([models / "net_a.npz"], ["naive"]), tmp_path / "r.db",
              executor="inline")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_a_worker_crash_through_the_command_line(models, tmp_path, plugin, monkeypatch):
    """A worker killed mid-job with two in flight: a recorded failure and a summary, not a
    traceback; the other job's result is stored."""
    tiny(tmp_path / "crash.npz", 5)
    monkeypatch.setenv("LIPVERIFY_TEST_CRASH", "crash")
    m = write_manifest(tmp_path / "m.yaml", models=[str(models / "net_a.npz"), "crash.npz"],
                       methods=["test-sleep"], plugins=["lv_test_plugin"])
    db = tmp_path / "r.db"
    res = CliRunner().invoke(main, ["batch", str(m), "--db", str(db), "--jobs", "2",
                                    "--executor", "local"])
    assert res.exit_code == 0 and res.exception is None, res.output  # failures are records
    assert "1 ok, 1 failed" in flat(res.output), res.output
    records = {Path(r.model).stem: r for r in by_key(db).values()}
    assert records["net_a"].status == "ok"
    assert "worker process died" in records["crash"].error
