"""ONNX converters, one module per op family; importing the package registers them."""

from . import activations, arithmetic, linear, sorting, structural  # noqa: F401  (registration)
