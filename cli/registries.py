"""Commands that list the registries: methods, solvers, qcs, ops, doctor."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import lipverify


@click.command()
def methods():
    """List the registered bound methods."""
    table = Table(title="bound methods")
    for col in ("name", "kind", "norms", "what it does"):
        table.add_column(col)
    for m in lipverify.list_methods():
        table.add_row(m.name, m.kind, ",".join(m.norms), escape(m.summary))
    Console().print(table)


@click.command()
def solvers():
    """List the SDP solvers in preference order, with whether each is usable here."""
    from lipverify.solvers.choose import BACKENDS

    table = Table(title="SDP solvers (auto tries them in this order)")
    for col in ("name", "usable here", "largest PSD cone", "what it is"):
        table.add_column(col)
    for b in BACKENDS.values():
        ok, why = b.availability()
        cone = "any" if b.max_cone >= 10**9 else str(b.max_cone)
        table.add_row(b.name, escape(("yes: " if ok else "no: ") + why), cone, escape(b.summary))
    Console().print(table)


@click.command()
def qcs():
    """List the quadratic constraints (one per activation kind) and the elementwise kinds."""
    import inspect

    from lipverify.ir.activations import ELEMENTWISE
    from lipverify.qc import QC_REGISTRY, QC_SUMMARY

    table = Table(title="quadratic constraints (FORMULATIONS.md §0, §4, §7)")
    for col in ("activation kind", "constraint"):
        table.add_column(col)
    for kind in QC_REGISTRY:
        table.add_row(kind, escape(QC_SUMMARY.get(kind, "")))
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


@click.command()
def ops():
    """List the ONNX operations the importer supports (generated from its registry)."""
    from lipverify.importers.onnx_import import NON_LIPSCHITZ  # (registers the converters)
    from lipverify.importers.onnx_registry import supported_ops

    click.echo("Supported ONNX ops:")
    click.echo("  " + ", ".join(supported_ops()))
    click.echo("Refused as not Lipschitz:")
    click.echo("  " + ", ".join(sorted({k.split(":")[0] for k in NON_LIPSCHITZ})))


@click.command()
def doctor():
    """Check python, packages, solvers and licences."""
    from lipverify.runtime.doctor import report

    table = Table(title="lipverify doctor")
    for col in ("component", "ok", "detail"):
        table.add_column(col)
    for c in report():
        table.add_row(c.component, "yes" if c.ok else "no", c.detail)
    Console().print(table)


# ------------------------------------------------------------------------- batch and results
