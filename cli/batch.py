"""Batch comparisons and their results database: batch, results show/export/plot/merge."""

from __future__ import annotations

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lipverify.batch.store import DEFAULT_DB
from lipverify.errors import UsageError

from .common import (
    GIB,
    SECONDS,
    err,
    handle_errors,
    load_options,
    note,
    parse_rows,
    parse_shape,
)


def _names(value: str | None) -> list[str] | None:
    return None if not value else [v.strip() for v in value.split(",") if v.strip()]


def _explicit_load_options(load_opts: dict) -> dict:
    """Model load options the user actually gave (defaults would change every job key)."""
    ctx = click.get_current_context()
    given = {k: v for k, v in load_opts.items() if v not in (None, False)
             and ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if "input_shape" in given:
        given["input_shape"] = list(parse_shape(given["input_shape"]))
    return given


def _status_line(record) -> str:
    r = record.result
    where = f"{record.model} [{record.method}, {record.norm}]"
    if r is None:
        first = (record.error or "").splitlines()[0]
        return f"[red]✗[/] {escape(where)}: {escape(first)}"
    tag = {"upper": "certified" if r.certified else "NOT certified",
           "lower": "lower bound", "estimate": "estimate"}[r.kind]
    return f"[green]✓[/] {escape(where)}: {r.bound:.6g} ({tag}, {r.time_s:.2g}s)"


def _progress_callback(progress, task):
    def on_event(event):
        if event.kind == "start":
            progress.update(task, total=event.total)
            if event.skipped:
                progress.console.print(
                    f"{event.skipped} job(s) already in the database: skipped (--force redoes)"
                )
        else:
            progress.console.print(_status_line(event.record), highlight=False)
            progress.update(task, completed=event.done)

    return on_event


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--methods", help="Comma-separated methods; default naive,gershgorin,lower "
              "for model paths, the manifest's list otherwise.")
@click.option("--norms", help="Comma-separated norms (l2,linf); default l2 or the manifest's.")
@click.option("--db", default=str(DEFAULT_DB), show_default=True,
              type=click.Path(dir_okay=False), help="Results database (SQLite).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes (one BLAS thread each).")
@click.option("--executor", type=click.Choice(["local", "dask", "inline"]), default="local",
              show_default=True, help="local process pool, Dask cluster, or this process.")
@click.option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("--shard", help="Run only part i of N (i from 0), e.g. $SLURM_ARRAY_TASK_ID/8.")
@click.option("--force", is_flag=True, help="Redo jobs already in the database.")
@click.option("--retry-errors", is_flag=True, help="Redo only the jobs that failed.")
@click.option("--time-limit", type=SECONDS,
              help="Solver seconds per job (part of the job key).")
@click.option("--memory-limit", type=GIB,
              help="GiB of address space per local worker; default: physical memory / jobs.")
@click.option("--output-rows", help="Bound only these output rows of every model, e.g. 7.")
@click.option("--plugin", "plugins", multiple=True,
              help="Module to import that registers extra methods (repeatable).")
@load_options
@handle_errors
def batch(inputs, methods, norms, db, jobs, executor, scheduler, shard, force, retry_errors,
          time_limit, memory_limit, output_rows, plugins, **load_opts):
    """Bound many models with many methods; results go to a database, resumably.

    INPUTS is one MANIFEST.yaml, or model files, directories and globs. Every job is stored
    the moment it finishes; re-running the same command skips finished jobs.
    """
    from lipverify.batch import load_manifest, manifest_from_paths, run_batch

    options = {"time_limit": time_limit} if time_limit is not None else {}
    model_options = _explicit_load_options(load_opts)
    if output_rows:
        model_options["output_rows"] = parse_rows(output_rows)
    manifests = [p for p in inputs if p.lower().endswith((".yaml", ".yml"))]
    if manifests and len(inputs) > 1:
        raise UsageError("give either one manifest (.yaml) or model paths, not both")
    if manifests:
        m = load_manifest(manifests[0], options=options, model_options=model_options,
                          methods=_names(methods), norms=_names(norms),
                          plugins=list(plugins) or None)
    else:
        m = manifest_from_paths(inputs, _names(methods) or ["naive", "gershgorin", "lower"],
                                _names(norms) or ["l2"], options, model_options,
                                plugins=list(plugins) or None)
    columns = (SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
               BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("batch", total=None)
        summary = run_batch(m, db, executor=executor, jobs=jobs, scheduler=scheduler,
                            shard=shard, force=force, retry_errors=retry_errors,
                            memory_limit_gb=memory_limit,
                            on_event=_progress_callback(progress, task))
    for text in summary.notes:
        note(text)
    err.print(
        f"{summary.ok} ok, {summary.errors} failed, {summary.skipped} skipped of "
        f"{summary.planned} job(s); results in {db} (`lipverify results show --db {db}`)",
        highlight=False,
    )


@click.group("results")
def results_group():
    """Show, export, plot and merge batch results databases."""


def _db_option(f):
    return click.option("--db", default=str(DEFAULT_DB), show_default=True,
                        type=click.Path(dir_okay=False), help="Results database.")(f)


def _records(db):
    from lipverify.batch import ResultsStore

    with ResultsStore(db, create=False) as store:
        return store.records()


@results_group.command("show")
@_db_option
@click.option("--errors", "only_errors", is_flag=True, help="Only the failed jobs.")
@click.option("--method", help="Only this method.")
@click.option("--model", help="Only models whose path contains this text.")
@handle_errors
def results_show(db, only_errors, method, model):
    """Print the stored results as a table."""
    from lipverify.batch import table_rows

    records = [r for r in _records(db) if (not only_errors or r.status == "error")
               and (not method or r.method == method) and (not model or model in r.model)]
    rows = table_rows(records)
    cols = ["model", "rows", "method", "norm", "options", "bound", "certified", "tightness",
            "time_s", "error"]
    cols = [c for c in cols if c in ("model", "method") or any(row[c] for row in rows)]
    table = Table(title=f"{db}: {len(rows)} job(s)")
    for col in cols:
        table.add_column(col, justify="right" if col in ("bound", "tightness", "time_s")
                         else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(row[c]) for c in cols),
                      style="red" if row["status"] == "error" else None)
    Console(width=max(120, Console().width)).print(table)


@results_group.command("export")
@_db_option
@click.option("--format", "fmt", type=click.Choice(["csv", "md"]), default="csv",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write here instead of stdout.")
@handle_errors
def results_export(db, fmt, output):
    """Export the stored results as CSV or Markdown (headed by the machines they ran on)."""
    from lipverify.batch import export

    text = export(_records(db), fmt, output)
    if output:
        err.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@results_group.command("plot")
@_db_option
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the PNG and PDF files.")
@handle_errors
def results_plot(db, out):
    """Plot bounds, tightness and time against size (PNG and PDF, one set per norm)."""
    from lipverify.batch.plots import plot_results  # (the lazy wrapper takes no notes)

    records = _records(db)
    if not any(r.status == "ok" for r in records):
        raise UsageError(f"{db}: no finished job to plot yet; run `lipverify batch` first")
    notes: list[str] = []
    for path in plot_results(records, out, notes=notes):
        err.print(f"wrote {path}")
    for text in notes:
        note(text)


@results_group.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_db_option
@handle_errors
def results_merge(sources, db):
    """Copy the jobs of SOURCES databases (e.g. one per SLURM shard) into --db."""
    from lipverify.batch import ResultsStore

    with ResultsStore(db) as store:
        for src in sources:
            err.print(f"{src}: {store.merge(src)} new job(s)")
