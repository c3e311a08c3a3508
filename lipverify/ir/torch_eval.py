"""Evaluate a :class:`~lipverify.ir.network.Network` in PyTorch (for Jacobians and gradient ascent).

:func:`to_torch` builds a ``torch.nn.Module`` whose forward maps ``(B, input_dim)`` to
``(B, output_dim)`` exactly as :meth:`Network.forward` does. Linear operators and
activations are converted through the registries :data:`LINEAR_CONVERTERS`,
:data:`ACTIVATION_CONVERTERS`, and elementwise activations through their
:class:`~lipverify.ir.activations.Elementwise` record: a new kind is one entry.

With ``smooth=True`` the piecewise-linear elementwise activations (relu, leaky_relu, abs,
hardtanh, slope) become softplus-based surrogates with sharpness ``smooth_beta``, so that the
Jacobian depends smoothly on ``x`` (the ReLU recipe of FORMULATIONS.md §6.4).

>>> import numpy as np
>>> from lipverify.ir.activations import SlopeRestricted
>>> from lipverify.ir.network import Network
>>> net = Network.sequential([np.array([[2.0, 0.0]]), np.array([[3.0]])],
...                          [SlopeRestricted.named("relu")])
>>> module = to_torch(net)
>>> float(module(torch.tensor([[1.0, 5.0]], dtype=torch.float64))[0, 0])
6.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import NotApplicableError
from .activations import (
    ELEMENTWISE,
    Activation,
    GroupSort,
    Householder,
    Lipschitz,
    MaxPool2d,
    SlopeRestricted,
)
from .linear import Compose, Conv2d, Dense, Diagonal, IndexMap, LinearOp, Stack, Sum
from .network import Affine, Network

Fn = Callable[[torch.Tensor], torch.Tensor]


def _lookup(registry: dict, obj, what: str):
    for cls in type(obj).__mro__:
        if cls in registry:
            return registry[cls]
    raise NotApplicableError(
        f"no PyTorch evaluation for {what} {type(obj).__name__}; add a converter to "
        "lipverify.ir.torch_eval"
    )


# ------------------------------------------------------------------ linear operators
def _dense(op: Dense, t) -> Fn:
    w = t(op.weight)
    return lambda x: x @ w.T


def _diagonal(op: Diagonal, t) -> Fn:
    d = t(op.scale)
    return lambda x: x * d


def _index_map(op: IndexMap, t) -> Fn:
    # index -1 reads an appended zero column
    idx = torch.tensor(op.index, device=t.device)
    if not (idx < 0).any():
        return lambda x: x.index_select(1, idx)
    idx[idx < 0] = op.in_dim
    return lambda x: torch.cat([x, x.new_zeros(x.shape[0], 1)], 1).index_select(1, idx)


def _conv2d(op: Conv2d, t) -> Fn:
    kernel = t(op.kernel)
    top, left, bottom, right = op.pads

    def conv(x):
        x = F.pad(x.reshape(x.shape[0], *op.in_shape), (left, right, top, bottom))
        y = F.conv2d(x, kernel, stride=op.stride, dilation=op.dilation, groups=op.groups)
        return y.reshape(x.shape[0], -1)

    return conv


def _compose(op: Compose, t) -> Fn:
    fns = [convert_linear(o, t) for o in op.ops]

    def chain(x):
        for fn in fns:
            x = fn(x)
        return x

    return chain


def _sum(op: Sum, t) -> Fn:
    fns = [convert_linear(o, t) for o in op.ops]
    return lambda x: sum(fn(x) for fn in fns)


def _stack(op: Stack, t) -> Fn:
    fns = [convert_linear(o, t) for o in op.ops]
    return lambda x: torch.cat([fn(x) for fn in fns], 1)


#: LinearOp class -> converter(op, tensor_factory) -> function (B, n_in) -> (B, n_out)
LINEAR_CONVERTERS: dict[type, Callable[..., Fn]] = {
    Dense: _dense,
    Diagonal: _diagonal,
    IndexMap: _index_map,
    Conv2d: _conv2d,
    Compose: _compose,
    Sum: _sum,
    Stack: _stack,
}


def convert_linear(op: LinearOp, t) -> Fn:
    return _lookup(LINEAR_CONVERTERS, op, "linear operator")(op, t)


# ------------------------------------------------------------------------ activations
def _slope(act: SlopeRestricted, beta: Callable | None) -> Fn:
    """The activation's torch form from its :class:`~lipverify.ir.activations.Elementwise`
    record, or its smooth surrogate (``beta`` given, piecewise-linear kinds)."""
    rec = ELEMENTWISE.get(act.name)
    if rec is None:
        raise NotApplicableError(f"no PyTorch version of activation {act.name!r}")
    if beta is not None and rec.smooth is not None:
        return lambda x: rec.smooth(torch, x, beta(), *act.params)
    return lambda x: rec.torch(torch, x, *act.params)


def _groupsort(act: GroupSort, beta) -> Fn:
    g = act.group_size

    def sort(x):
        return torch.sort(x.reshape(x.shape[0], -1, g), dim=2, descending=act.descending)[0]

    return lambda x: sort(x).reshape(x.shape[0], -1)


def _householder(act: Householder, beta) -> Fn:
    def reflect(x):
        v = x.reshape(x.shape[0], -1, 2)
        u = v.new_tensor(act.u)
        proj = (v @ u)[..., None]
        return torch.where(proj > 0, v, v - 2.0 * proj * u).reshape(x.shape[0], -1)

    return reflect


def _maxpool(act: MaxPool2d, beta) -> Fn:
    top, left, bottom, right = act.pads

    def pool(x):
        x = x.reshape(x.shape[0], *act.in_shape)
        x = F.pad(x, (left, right, top, bottom), value=-torch.inf)
        return F.max_pool2d(x, act.kernel, act.stride).reshape(x.shape[0], -1)

    return pool


def _lipschitz(act: Lipschitz, beta) -> Fn:
    if act.name != "softmax":
        raise NotApplicableError(f"opaque activation {act.name!r} has no forward pass")
    return lambda x: torch.softmax(x, dim=1)


#: Activation class -> converter(act, beta) -> function; ``beta()`` gives the surrogate
#: sharpness, or ``beta`` is None for the exact activation
ACTIVATION_CONVERTERS: dict[type, Callable[..., Fn]] = {
    SlopeRestricted: _slope,
    GroupSort: _groupsort,
    Householder: _householder,
    MaxPool2d: _maxpool,
    Lipschitz: _lipschitz,
}


def convert_activation(act: Activation, beta: Callable | None = None) -> Fn:
    return _lookup(ACTIVATION_CONVERTERS, act, "activation")(act, beta)


# ---------------------------------------------------------------------------- network
class Tensors:
    """Turns read-only numpy arrays into tensors of one dtype on one device."""

    def __init__(self, dtype, device):
        self.dtype, self.device = dtype, torch.device(device)

    def __call__(self, arr) -> torch.Tensor:
        return torch.tensor(arr, dtype=self.dtype, device=self.device)


class TorchNetwork(torch.nn.Module):
    """``(B, input_dim) -> (B, output_dim)``; built by :func:`to_torch` (no trainable state).

    A smooth module reads ``smooth_beta`` at every call: set it to a float, or to a ``(B, 1)``
    tensor for one sharpness per row.
    """

    def __init__(self, network: Network, dtype, device, smooth: bool, smooth_beta):
        super().__init__()
        t = Tensors(dtype, device)
        self.input_dim, self.output_dim = network.input_dim, network.output_dim
        self.smooth_beta = smooth_beta
        beta = (lambda: self.smooth_beta) if smooth else None
        self._nodes = [
            (self._affine(n.pre, t), convert_activation(n.activation, beta)) for n in network.nodes
        ]
        self._output = self._affine(network.output, t)

    @staticmethod
    def _affine(pre: Affine, t):
        terms = [(term.source, convert_linear(term.op, t)) for term in pre.terms]
        return t(pre.bias), terms

    @staticmethod
    def _evaluate(affine, values):
        bias, terms = affine
        out = bias
        for source, fn in terms:
            out = out + fn(values[source])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x.reshape(x.shape[0], -1)]
        for affine, act in self._nodes:
            values.append(act(self._evaluate(affine, values)))
        return self._evaluate(self._output, values)


def to_torch(
    network: Network,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    smooth: bool = False,
    smooth_beta: float | torch.Tensor = 20.0,
) -> TorchNetwork:
    """PyTorch module computing ``network.forward`` (or its smooth surrogate).

    ``smooth=True`` replaces relu, leaky_relu, abs, hardtanh, slope by softplus surrogates of
    sharpness ``smooth_beta`` (error at most ``log 2 / smooth_beta`` per unit).
    Raises :class:`~lipverify.errors.NotApplicableError` for kinds with no converter.
    """
    return TorchNetwork(network, dtype, device, smooth, smooth_beta)
