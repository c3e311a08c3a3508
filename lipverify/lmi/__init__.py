"""LMI kinds (the ``LMI`` contract): feed-forward chains, residual DAGs, banded residual
chains and l-infinity rows."""
