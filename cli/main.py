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
from rich.console import Console
from rich.table import Table

import lipverify
from lipverify.errors import LipverifyError

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
    help="SDP solver: auto, smooth (built in), clarabel, scs, mosek.",
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


if __name__ == "__main__":  # pragma: no cover
    main()
