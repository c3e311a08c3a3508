"""Certification in float64 (FORMULATIONS.md §8): the Rump gate, the LMI gate, clique-wise
checks, conv norms and certificate files."""
