"""Commands on models: bound, compare, info, check."""

from __future__ import annotations

import csv
import io
import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import lipverify
from lipverify.errors import LipverifyError, UsageError
from lipverify.status import Outcome

from . import command_started
from .common import (
    EXIT_INVALID_CERT,
    EXIT_UNSOUND,
    SECONDS,
    err,
    handle_errors,
    load_options,
    loader_kwargs,
    note,
    output_file,
    parse_domain,
    parse_rows,
    write_file,
)


@click.command()
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
    help="SDP solver: auto, ipm, lowrank or smooth (built in), clarabel, scs, cvxopt, mosek "
    "(`lipverify solvers`).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the low-rank solver runs (large chains): auto = CUDA when torch sees a GPU. "
    "Certificates are always checked in float64 on the CPU.",
)
@click.option(
    "--time-limit",
    type=SECONDS,
    help="Seconds for the whole bound (auto: 120, 300 on conv and residual nets); the "
    "best certified bound found so far is returned when it runs out. With auto it covers "
    "the whole command, loading the model and the sampled lower bound included; with "
    "another method the sampled lower bound takes 10% more at most.",
)
@click.option(
    "--save-certificate",
    type=click.Path(dir_okay=False),
    callback=output_file,
    help="Write the multipliers and rho to this JSON file (see `lipverify check`).",
)
@click.option("--margins", is_flag=True,
              help="Also bound every logit difference f_i - f_j (l2; see `lipverify "
                   "robustness`).")
@click.option("--region", "region_spec", metavar="CENTER.npy:EPS[:l2]",
              help="Local bound (l2) for inputs in the l-infinity box of half-width EPS "
                   "around the point in CENTER.npy, or in the l2 ball with :l2.")
@click.option("--vnnlib", "vnnlib_path", type=click.Path(dir_okay=False),
              help="Local bound (l2) for inputs in this VNN-LIB property's input box.")
@click.option("--domain", callback=parse_domain,
              help="Input range LO:HI the --region is clipped to, e.g. 0:1 for images.")
@load_options
@handle_errors
def bound(
    model, method, norm, output_rows, fmt, lower, solver, device, time_limit, save_certificate,
    margins, region_spec, vnnlib_path, domain, **load_opts
):
    """Bound the Lipschitz constant of MODEL (.onnx, .pt/.pt2, .npz, .mat, .nnet).

    With --region or --vnnlib the bound is local: it holds for pairs of inputs inside that
    region only, and is never above the global bound.
    """
    if margins and (norm != "l2" or output_rows):
        raise UsageError("--margins bounds the l2 logit differences of all outputs; drop "
                         "--norm linf / --output-rows")
    region, region_notes = _region(region_spec, vnnlib_path, domain, norm, margins,
                                   save_certificate)
    with err.status("bounding") as status:
        result = lipverify.bound(
            model,
            method=method,
            norm=norm,
            output_rows=parse_rows(output_rows),
            lower_bound=lower,
            solver=solver,
            device=device,
            time_limit=time_limit,
            region=region,
            progress=_stages(status) if method == "auto" else None,
            started=command_started(),
            **loader_kwargs(**load_opts),
        )
    for text in region_notes:
        note(text)
    if region is not None and fmt == "text":
        _print_local(result)
    if save_certificate:
        lipverify.save_certificate(result, save_certificate)
        err.print(f"certificate written to {save_certificate}")
    pairs = None
    if margins:
        pairs = lipverify.margin_bounds(model, global_result=result, time_limit=time_limit,
                                        solver=solver, **loader_kwargs(**load_opts))
    if fmt == "json":
        data = json.loads(result.to_json())
        if pairs is not None:
            data["margins"] = pairs.to_dict()
        click.echo(json.dumps(data) if pairs is not None else result.to_json())
    else:
        click.echo(str(result))
        if "auto_choice" in result.details:
            err.print(f"method auto -> {result.method}")
        for w in result.warnings:
            note(w)
        if pairs is not None:
            _print_margins(pairs)
    if result.status.outcome is Outcome.UNSOUND:
        sys.exit(EXIT_UNSOUND)


def _stages(status):
    """auto's progress on stderr: the running stage on the status line, one line per stage
    that ended (its bound and the best so far) or was skipped."""

    def show(event) -> None:
        if event.state == "running":
            status.update(str(event))
        else:
            err.print(str(event), style="dim", markup=False, highlight=False)

    return show


def _region(spec, vnnlib_path, domain, norm, margins, save_certificate):
    """``(region or None, notes)`` from --region / --vnnlib, refusing what does not combine
    (every conflict listed at once)."""
    if spec is None and vnnlib_path is None:
        if domain is not None:
            raise UsageError("--domain clips a --region; give --region CENTER.npy:EPS too")
        return None, []
    problems = []
    if spec is not None and vnnlib_path is not None:
        problems.append("give one of --region and --vnnlib")
    if norm != "l2":
        problems.append("local bounds over a region are l2 bounds: drop --norm linf")
    if margins:
        problems.append("--margins is for the global bound: drop it with a region")
    if save_certificate:
        problems.append("--save-certificate: a local bound's certificate is for the localized "
                        "network, which `lipverify check MODEL` cannot re-check; drop it")
    if vnnlib_path is not None and domain is not None:
        problems.append("--domain clips --region only (a VNN-LIB box is used as written)")
    if problems:
        raise UsageError("cannot bound over a region: " + "; ".join(problems))
    if vnnlib_path is not None:
        return lipverify.read_vnnlib(vnnlib_path)
    from lipverify.regions import region_from_spec

    return region_from_spec(spec, domain=domain), []


def _print_local(result) -> None:
    """What the local bound rests on, on stderr."""
    d = result.details
    region = d.get("region", {})
    shape = (f"l2 ball of radius {region['radius']:g}" if region.get("kind") == "ball" else
             f"box of half-width up to {region.get('max_half_width', 0):g}")
    fixed = sum(r["inactive"] + r["active"] for r in d.get("stable_neurons", []))
    total = fixed + sum(r["unstable"] for r in d.get("stable_neurons", []))
    err.print(f"local bound on a {shape}: {result.bound:.9g} (global {d['global_bound']:.9g}"
              f"{'' if d.get('global_certified') else ', not certified'}); "
              f"{fixed} of {total} neurons fixed on the region; used the {d['used']} bound",
              highlight=False)


def _print_margins(pairs) -> None:
    """The K x K matrix of certified L_ij on stderr, and one line per pair on stdout."""
    k = pairs.classes
    from lipverify.robustness.margins import sqrt2_times

    table = Table(title=f"certified Lip(f_i - f_j), l2 (each at most sqrt(2) L = "
                  f"{sqrt2_times(pairs.global_result.bound):.6g})")
    table.add_column("i \\ j")
    for j in range(k):
        table.add_column(str(j), justify="right")
    mat = pairs.matrix()
    for i in range(k):
        table.add_row(str(i), *["" if i == j else f"{mat[i, j]:.4g}" for j in range(k)])
    err.print(table)
    for (i, j), value, source in zip(pairs.pairs, pairs.values, pairs.source):
        click.echo(f"  L[{i},{j}] <= {value:.9g} ({source})")


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option(
    "--methods",
    default="naive,gershgorin,lower",
    show_default=True,
    help="Comma-separated methods.",
)
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--output-rows", help="Bound only these output rows, e.g. 7.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Also write a CSV here.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@load_options
@handle_errors
def compare(models, methods, norm, output_rows, csv_path, fmt, **load_opts):
    """Bound every MODEL with every method and print a table (models x methods)."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        lipverify.get_method(name)  # reject unknown methods before any work
    opts = loader_kwargs(**load_opts)
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
                    net, method=name, norm=norm, output_rows=parse_rows(output_rows), **opts
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
        err.print(f"[red]skipped[/] {escape(what)}: {escape(why)}", highlight=False)
    if csv_path:
        write_csv(csv_path, results)
        err.print(f"wrote {csv_path}")
    if not results:
        sys.exit(4 if failures else 0)


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
    """The results as CSV, written all or nothing (a UsageError naming ``path`` if it cannot)."""
    fh = io.StringIO()
    writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in results:
        d = r.to_dict()
        d["layers"] = "-".join(map(str, r.layers))
        d["status"] = str(r.status)
        d["output_rows"] = "" if r.output_rows is None else ",".join(map(str, r.output_rows))
        writer.writerow({k: d[k] for k in CSV_FIELDS})
    write_file(path, fh.getvalue(), "CSV file")


@click.command()
@click.argument("model", type=click.Path())
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@load_options
@handle_errors
def info(model, fmt, **load_opts):
    """Show MODEL's layers, shapes, activations and parameter count."""
    net = lipverify.load(model, **loader_kwargs(**load_opts))
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
    for text in net.provenance.notes:
        note(text)


@click.command()
@click.argument("model", type=click.Path())
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False))
@load_options
@handle_errors
def check(model, certificate, **load_opts):
    """Re-verify CERTIFICATE for MODEL from scratch, with no solver (exit 0 valid, 7 invalid)."""
    net = lipverify.load(model, **loader_kwargs(**load_opts))
    res = lipverify.check_certificate(net, certificate)
    click.echo(res.message)
    if not res.valid:
        sys.exit(EXIT_INVALID_CERT)


