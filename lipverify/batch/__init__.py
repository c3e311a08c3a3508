"""Batch comparisons: manifests, a resumable results store, local and Dask execution."""
