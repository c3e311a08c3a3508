"""The ``lipverify`` command line (click). Tables and progress go to stderr (rich);
stdout carries the results: one line per result in text mode, one JSON object
per result with ``--format json``.

Exit codes: 0 ok, 1 internal error, 2 usage error, 3 unreadable model,
4 unsupported model or method, 5 solver failure, 6 unsound result (bug),
7 certificate rejected by `lipverify check`.
"""

from __future__ import annotations

import csv
import json
import sys
import traceback
from functools import wraps

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

import lipverify
from lipverify.batch.store import DEFAULT_DB
from lipverify.errors import LipverifyError, UsageError

err = Console(stderr=True)
EXIT_UNSOUND = 6
EXIT_INVALID_CERT = 7


def _rows(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter("expected comma-separated integers, e.g. 0,3") from exc


def _handle_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except LipverifyError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            best = getattr(exc, "best", None)
            if isinstance(best, lipverify.BoundResult) and best.certified:
                err.print(f"best certified bound found before the failure: {best.bound:.10g} "
                          f"({best.method}, {best.status})", highlight=False)
            sys.exit(exc.exit_code)
        except MemoryError as exc:
            if debug:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] out of memory: {exc}")
            sys.exit(5)

    return wrapper


def _load_options(f):
    """Options shared by every command that loads a model."""
    opts = [
        click.option(
            "--layout",
            type=click.Choice(["out-in", "in-out"]),
            help="Weight storage orientation, when a weight file is ambiguous.",
        ),
        click.option(
            "--activation",
            default="relu",
            show_default=True,
            help="Hidden activation for weight files that do not store one "
            "(e.g. relu, tanh, leaky_relu:0.01).",
        ),
        click.option(
            "--keep-softmax",
            is_flag=True,
            help="Bound a final Softmax as a 1-Lipschitz map instead of dropping it.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow unpickling whole-model PyTorch files. Only for trusted files.",
        ),
        click.option("--input-shape", help="Input shape for PyTorch files, e.g. 1,28,28."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _options(layout, activation, keep_softmax, trust_pickle, input_shape) -> dict:
    opts = {"activation": activation, "keep_softmax": keep_softmax, "trust_pickle": trust_pickle}
    if layout:
        opts["layout"] = layout
    if input_shape:
        opts["input_shape"] = tuple(int(v) for v in input_shape.split(","))
    return opts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lipverify.__version__, prog_name="lipverify")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug):
    """Certified upper bounds on the Lipschitz constant of neural networks."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option(
    "--method",
    "-m",
    default="auto",
    show_default=True,
    help="Bound method (see `lipverify methods`); auto = tightest certified that fits.",
)
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--output-rows", help="Bound only these output rows (logits), e.g. 0,3.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--lower/--no-lower",
    default=True,
    show_default=True,
    help="Also compute a sampled lower bound and check the bound against it.",
)
@click.option(
    "--solver",
    default="auto",
    show_default=True,
    help="SDP solver: auto, ipm or smooth (built in), clarabel, scs, mosek.",
)
@click.option(
    "--time-limit",
    type=float,
    help="Seconds for the solver; the best certified "
    "bound found so far is returned when it runs out.",
)
@click.option(
    "--save-certificate",
    type=click.Path(dir_okay=False),
    help="Write the multipliers and rho to this JSON file (see `lipverify check`).",
)
@_load_options
@_handle_errors
def bound(
    model, method, norm, output_rows, fmt, lower, solver, time_limit, save_certificate, **load_opts
):
    """Bound the Lipschitz constant of MODEL (.onnx, .pt/.pt2, .npz, .mat, .nnet)."""
    result = lipverify.bound(
        model,
        method=method,
        norm=norm,
        output_rows=_rows(output_rows),
        lower_bound=lower,
        solver=solver,
        time_limit=time_limit,
        **_options(**load_opts),
    )
    if save_certificate:
        lipverify.save_certificate(result, save_certificate)
        err.print(f"certificate written to {save_certificate}")
    if fmt == "json":
        click.echo(result.to_json())
    else:
        click.echo(str(result))
        if "auto_choice" in result.details:
            err.print(f"method auto -> {result.method}")
        for w in result.warnings:
            _note(w)
    if result.status == "unsound":
        sys.exit(EXIT_UNSOUND)


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option(
    "--methods",
    default="naive,gershgorin,lower",
    show_default=True,
    help="Comma-separated methods.",
)
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--output-rows", help="Bound only these output rows, e.g. 7.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write a CSV here.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_load_options
@_handle_errors
def compare(models, methods, norm, output_rows, csv_path, fmt, **load_opts):
    """Bound every MODEL with every method and print a table (models x methods)."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        lipverify.get_method(name)  # reject unknown methods before any work
    opts = _options(**load_opts)
    results, failures = [], []
    for path in models:
        try:
            net = lipverify.load(path, **opts)
        except LipverifyError as exc:
            failures.append((path, str(exc).splitlines()[0]))
            continue
        for name in names:
            try:
                r = lipverify.bound(
                    net, method=name, norm=norm, output_rows=_rows(output_rows), **opts
                )
            except LipverifyError as exc:
                failures.append((f"{path} [{name}]", str(exc).splitlines()[0]))
                continue
            results.append(r)
            if fmt == "json":
                click.echo(r.to_json())
    table = Table(title=f"Lipschitz bounds ({norm}); ✓ certified, ✗ not")
    table.add_column("model", no_wrap=True)
    table.add_column("widths", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right")
    by_model: dict[str, dict[str, lipverify.BoundResult]] = {}
    for r in results:
        by_model.setdefault(r.model, {})[r.method] = r
    for model_name, row in by_model.items():
        first = next(iter(row.values()))
        cells = []
        for name in names:
            r = row.get(name)
            mark = "" if r is None or r.kind != "upper" else (" ✓" if r.certified else " ✗")
            cells.append("-" if r is None else f"{r.bound:.6g}{mark} ({r.time_s:.2g}s)")
        table.add_row(model_name, _widths(first.layers), *cells)
    if fmt == "text":
        Console(width=max(120, 40 + 24 * len(names))).print(table)
    else:
        err.print(table)
    for what, why in failures:
        err.print(f"[red]skipped[/] {what}: {why}", highlight=False)
    if csv_path:
        write_csv(csv_path, results)
        err.print(f"wrote {csv_path}")
    if not results:
        sys.exit(4 if failures else 0)


def _note(text: str) -> None:
    err.print("note:", style="yellow", end=" ")
    err.print(text, markup=False, highlight=False)


def _widths(layers) -> str:
    return (
        "-".join(str(w) for w in layers)
        if len(layers) <= 6
        else (f"{layers[0]}-...({len(layers) - 2} layers)...-{layers[-1]}")
    )


CSV_FIELDS = (
    "model",
    "method",
    "norm",
    "bound",
    "certified",
    "kind",
    "status",
    "time_s",
    "lower_bound",
    "layers",
    "output_rows",
    "solver",
    "sha256",
    "version",
)


def write_csv(path: str, results) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            d = r.to_dict()
            d["layers"] = "-".join(map(str, r.layers))
            d["output_rows"] = "" if r.output_rows is None else ",".join(map(str, r.output_rows))
            writer.writerow({k: d[k] for k in CSV_FIELDS})


@main.command()
@click.argument("model", type=click.Path())
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_load_options
@_handle_errors
def info(model, fmt, **load_opts):
    """Show MODEL's layers, shapes, activations and parameter count."""
    net = lipverify.load(model, **_options(**load_opts))
    summary = {
        "model": net.name,
        "input_shape": list(net.input_shape),
        "output_shape": list(net.output_shape),
        "widths": net.widths,
        "feed_forward": net.is_sequential,
        "parameters": net.num_parameters,
        "sha256": net.provenance.sha256,
        "format": net.provenance.format,
        "layers": net.summary(),
        "notes": list(net.provenance.notes),
    }
    if fmt == "json":
        click.echo(json.dumps(summary))
        return
    table = Table(
        title=f"{net.name}: {net.num_parameters:,} parameters, input "
        f"{tuple(net.input_shape)} -> output {tuple(net.output_shape)}"
    )
    for col in ("#", "from", "linear map", "activation", "width"):
        table.add_column(col)
    for row in net.summary():
        table.add_row(
            str(row["layer"]),
            ",".join(map(str, row["sources"])),
            row["linear"],
            row["activation"],
            str(row["width"]),
        )
    Console().print(table)
    kind = "feed-forward chain" if net.is_sequential else "DAG with skip connections"
    click.echo(f"structure: {kind}; sha256 {net.provenance.sha256}")
    for note in net.provenance.notes:
        _note(note)


@main.command()
@click.argument("model", type=click.Path())
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False))
@_load_options
@_handle_errors
def check(model, certificate, **load_opts):
    """Re-verify CERTIFICATE for MODEL from scratch, with no solver (exit 0 valid, 7 invalid)."""
    net = lipverify.load(model, **_options(**load_opts))
    res = lipverify.check_certificate(net, certificate)
    click.echo(res.message)
    if not res.valid:
        sys.exit(EXIT_INVALID_CERT)


@main.command()
def methods():
    """List the registered bound methods."""
    table = Table(title="bound methods")
    for col in ("name", "kind", "norms", "what it does"):
        table.add_column(col)
    for m in lipverify.list_methods():
        table.add_row(m.name, m.kind, ",".join(m.norms), m.summary)
    Console().print(table)


@main.command()
def solvers():
    """List the SDP solvers in preference order, with whether each is usable here."""
    from lipverify.sdp.backends import BACKENDS

    table = Table(title="SDP solvers (auto tries them in this order)")
    for col in ("name", "usable here", "largest PSD cone", "what it is"):
        table.add_column(col)
    for b in BACKENDS.values():
        ok, why = b.availability()
        cone = "any" if b.max_cone >= 10**9 else str(b.max_cone)
        table.add_row(b.name, ("yes: " if ok else "no: ") + why, cone, b.summary)
    Console().print(table)


@main.command()
def qcs():
    """List the quadratic constraints (one per activation kind) and the elementwise kinds."""
    import inspect

    from lipverify.activations import ELEMENTWISE
    from lipverify.sdp.qc import QC_REGISTRY, QC_SUMMARY

    table = Table(title="quadratic constraints (FORMULATIONS.md §0, §4, §7)")
    for col in ("activation kind", "constraint"):
        table.add_column(col)
    for kind in QC_REGISTRY:
        table.add_row(kind, QC_SUMMARY.get(kind, ""))
    Console().print(table)
    table = Table(title="elementwise activations (kind slope)")
    for col in ("name", "slope interval"):
        table.add_column(col, no_wrap=True)
    for name, rec in ELEMENTWISE.items():
        params = [p for p in inspect.signature(rec.slopes).parameters.values()
                  if p.default is p.empty]
        slopes = "[{:.6g}, {:.6g}]".format(*rec.slopes()) if not params else \
            "depends on " + ", ".join(p.name for p in params)
        table.add_row(name, slopes)
    Console().print(table)


@main.command()
def ops():
    """List the ONNX operations the importer supports (generated from its registry)."""
    from lipverify.importers.onnx_import import NON_LIPSCHITZ, supported_ops

    click.echo("Supported ONNX ops:")
    click.echo("  " + ", ".join(supported_ops()))
    click.echo("Refused as not Lipschitz:")
    click.echo("  " + ", ".join(sorted({k.split(":")[0] for k in NON_LIPSCHITZ})))


@main.command()
def doctor():
    """Check python, packages, solvers and licences."""
    from lipverify.doctor import report

    table = Table(title="lipverify doctor")
    for col in ("component", "ok", "detail"):
        table.add_column(col)
    for c in report():
        table.add_row(c.component, "yes" if c.ok else "no", c.detail)
    Console().print(table)


# ------------------------------------------------------------------------- batch and results
def _names(value: str | None) -> list[str] | None:
    return None if not value else [v.strip() for v in value.split(",") if v.strip()]


def _explicit_load_options(load_opts: dict) -> dict:
    """Model load options the user actually gave (defaults would change every job key)."""
    ctx = click.get_current_context()
    given = {k: v for k, v in load_opts.items() if v not in (None, False)
             and ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if "input_shape" in given:
        try:
            given["input_shape"] = [int(v) for v in given["input_shape"].split(",")]
        except ValueError:
            raise UsageError("--input-shape: expected comma-separated sizes, e.g. 1,28,28") \
                from None
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


@main.command()
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
@click.option("--time-limit", type=float, help="Solver seconds per job (part of the job key).")
@click.option("--memory-limit", type=float,
              help="GiB of address space per local worker; default: physical memory / jobs.")
@click.option("--output-rows", help="Bound only these output rows of every model, e.g. 7.")
@click.option("--plugin", "plugins", multiple=True,
              help="Module to import that registers extra methods (repeatable).")
@_load_options
@_handle_errors
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
        model_options["output_rows"] = _rows(output_rows)
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
    for note in summary.notes:
        _note(note)
    err.print(
        f"{summary.ok} ok, {summary.errors} failed, {summary.skipped} skipped of "
        f"{summary.planned} job(s); results in {db} (`lipverify results show --db {db}`)",
        highlight=False,
    )


@main.group("results")
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
@_handle_errors
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
@_handle_errors
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
@_handle_errors
def results_plot(db, out):
    """Plot bounds, tightness and time against size (PNG and PDF, one set per norm)."""
    from lipverify.batch import plot_results

    records = _records(db)
    if not any(r.status == "ok" for r in records):
        raise UsageError(f"{db}: no finished job to plot yet; run `lipverify batch` first")
    for path in plot_results(records, out):
        err.print(f"wrote {path}")


@results_group.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_db_option
@_handle_errors
def results_merge(sources, db):
    """Copy the jobs of SOURCES databases (e.g. one per SLURM shard) into --db."""
    from lipverify.batch import ResultsStore

    with ResultsStore(db) as store:
        for src in sources:
            err.print(f"{src}: {store.merge(src)} new job(s)")


if __name__ == "__main__":  # pragma: no cover
    main()
