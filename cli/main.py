"""The ``lipverify`` command line (click). Tables and progress go to stderr (rich);
stdout carries the results: one line per result in text mode, one JSON object
per result with ``--format json``.

Exit codes: 0 ok, 1 internal error, 2 usage error, 3 unreadable model,
4 unsupported model or method, 5 solver failure, 6 unsound result (bug),
7 certificate rejected by `lipverify check`.
"""


from __future__ import annotations

import click

import lipverify


class Main(click.Group):
    """The root group: an error no command handled (a bug, a raw numerical failure) is one
    "error:" line and its exit code, like every other; the traceback only with ``--debug``."""

    def main(self, *args, **kwargs):
        from . import begin

        begin()  # every command, --help and --version included
        return super().main(*args, **kwargs)

    def invoke(self, ctx):
        from .common import passes_through, report_error

        try:
            return super().invoke(ctx)
        except Exception as exc:
            if passes_through(exc):
                raise
            report_error(exc, bool(ctx.params.get("debug")))


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lipverify.__version__, prog_name="lipverify")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of an error (before its one-line message).")
def main(debug):
    """Certified upper bounds on the Lipschitz constant of neural networks."""

def _register() -> None:
    """One module per command group; each command is added here."""
    from . import batch, bounds, registries, robustness

    for cmd in (bounds.bound, bounds.compare, bounds.info, bounds.check, registries.methods,
                registries.solvers, registries.qcs, registries.ops, registries.doctor,
                batch.batch, batch.results_group, robustness.robustness):
        main.add_command(cmd)

_register()

if __name__ == "__main__":  # pragma: no cover
    main()
