"""``lipverify robustness``: certified robust accuracy (l2) on a dataset."""

from __future__ import annotations

import json

import click
from rich.table import Table

from lipverify.errors import UsageError
from lipverify.robustness import certified_robustness, load_dataset

from .common import (
    SECONDS,
    err,
    handle_errors,
    load_options,
    loader_kwargs,
    note,
    output_file,
    parse_domain,
    write_file,
)


def _eps(ctx, param, value):
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give radii separated by commas, e.g. "
                                 "0.1,0.25,0.5") from None
    if not values or not all(0 < v < float("inf") for v in values):
        raise click.BadParameter(f"{value!r}: radii must be finite and > 0")
    return values


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help=".npz with arrays x (N, ...) and y (N,) of integer labels.")
@click.option("--eps", default="0.1,0.25,0.5,1.0", show_default=True, callback=_eps,
              help="l2 radii at which to report certified accuracy.")
@click.option("--method", "-m", default="auto", show_default=True,
              help="Method for the global (and pairwise) bounds.")
@click.option("--pairs/--no-pairs", default=True, show_default=True,
              help="Also certify with the pairwise (logit-difference) bounds.")
@click.option("--pair-solve", type=click.Choice(["reuse", "full"]), default="reuse",
              show_default=True,
              help="reuse: the global multipliers, polished (about 3x the global time); "
                   "full: a solve per class pair (tightest, K(K-1)/2 solves).")
@click.option("--local", is_flag=True,
              help="Also try the local bound on each eps-ball the pairwise bound left open.")
@click.option("--domain", callback=parse_domain,
              help="Input range LO:HI for the local bounds, e.g. 0:1 for images.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--time-limit", type=SECONDS, help="Seconds for each bound computed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Write the full report (per sample radii, margins, accuracy) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Write the per-sample radii as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Plot certified accuracy against eps (.png, .pdf, .svg).")
@load_options
@handle_errors
def robustness(model, data_path, eps, method, pairs, pair_solve, local, domain, limit,
               time_limit, json_path, csv_path, plot_path, **load_opts):
    """Certified robust accuracy of MODEL on the samples in --data (l2 balls).

    For each sample: the prediction, the smallest margin (a float64 lower bound on the exact
    one) and the certified radius from the global bound, the pairwise bounds and, with
    --local, the local bound on each ball. The table is certified accuracy at each eps.
    """
    import lipverify

    if plot_path and not plot_path.lower().endswith((".png", ".pdf", ".svg")):
        raise UsageError(f"{plot_path}: the plot is written as .png, .pdf or .svg")
    net = lipverify.load(model, **loader_kwargs(**load_opts))
    x, y = load_dataset(data_path, net.input_dim, net.output_dim)
    if limit:
        x, y = x[:limit], y[:limit]
    with err.status("certifying") as status:
        report = certified_robustness(
            net, x, y, eps, method=method, pairwise=pairs, local=local, pair_solve=pair_solve,
            domain=domain, time_limit=time_limit,
            progress=lambda msg: status.update(msg))
    table = Table(title=f"{report.model}: certified accuracy ({len(x)} samples, clean "
                  f"{100 * report.clean_accuracy:.1f}%, L2 <= {report.global_bound:.6g})")
    table.add_column("eps", justify="right")
    for kind in report.kinds:
        table.add_column(kind, justify="right")
    for row in report.table():
        table.add_row(f"{row['eps']:g}", *[f"{100 * row[k]:.1f}%" for k in report.kinds])
    err.print(table)
    for text in report.notes:
        note(text)
    click.echo(json.dumps({"model": report.model, "method": report.method,
                           "global_bound": report.global_bound, "certified": report.certified,
                           "clean_accuracy": report.clean_accuracy,
                           "certified_accuracy": report.table()}))
    if json_path:
        write_file(json_path, json.dumps(report.to_dict(), indent=1), "report")
    if csv_path:
        write_file(csv_path, report.samples_csv(), "CSV")
    if plot_path:
        report.plot(plot_path)
        err.print(f"plot written to {plot_path}")
