"""The ``lipverify`` command line; :mod:`lipverify_cli.main` is the entry point."""

import time

#: When the command began (``time.perf_counter()``), before the library's imports: ``auto``'s
#: time limit counts from here, so that ``lipverify bound`` as a whole stays within it.
STARTED = time.perf_counter()
