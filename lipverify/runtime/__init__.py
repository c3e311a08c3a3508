"""Runtime support: the shared time budget and the environment report."""
