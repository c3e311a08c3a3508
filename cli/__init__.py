"""The ``lipverify`` command line; :mod:`lipverify_cli.main` is the entry point."""

import time

#: When the current command began (``time.perf_counter()``): ``auto``'s time limit counts from
#: here, so that ``lipverify bound`` as a whole stays within it. The process's first command
#: counts from this module's import, before the library's imports; every later command in the
#: same process (click's ``CliRunner``, a notebook) from its own start (:func:`begin`).
STARTED = time.perf_counter()
_commands = 0


def begin() -> None:
    """Mark the start of a command (called by the root group for every invocation)."""
    global STARTED, _commands
    if _commands:
        STARTED = time.perf_counter()
    _commands += 1


def command_started() -> float:
    """The current command's start (see :data:`STARTED`)."""
    return STARTED
