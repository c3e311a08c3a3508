"""LipSDP machinery: QCs, the chain LMI, solver backends, sequential bounds, certificates."""
