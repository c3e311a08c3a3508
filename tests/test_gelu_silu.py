"""GELU and SiLU, each one Elementwise entry (activations.ELEMENTWISE): derived slope bounds,
the torch and ONNX spellings, and certified bounds between the lower bound and naive."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_onnx_ops import check, make_model, node

import lipverify
from lipverify.errors import UnsupportedModelError
from lipverify.importers.onnx_import import network_from_onnx
from lipverify.ir.activations import ELEMENTWISE, SlopeRestricted

torch = pytest.importorskip("torch")


def _derivative(name, x, k=1.0):
    """The exact derivative, written independently of the library: GELU
    ``Phi(u) + u phi(u)`` (u = k x), SiLU ``s (1 + x (1 - s))``."""
    from scipy.special import erf

    if name == "gelu":
        u = k * x
        return 0.5 * (1 + erf(u / math.sqrt(2))) + u * np.exp(-u * u / 2) / math.sqrt(2 * math.pi)
    s = 1 / (1 + np.exp(-x))
    return s * (1 + x * (1 - s))


@pytest.mark.parametrize("name, beta", [("gelu", 1.1289041451851651),
                                        ("silu", 1.0998393201288)])
def test_slopes_are_the_derived_extremes(name, beta):
    """beta = g'(x*) at g''(x*) = 0 (x* = sqrt 2 for GELU, x tanh(x/2) = 2 for SiLU), and
    alpha = 1 - beta because g'(x) + g'(-x) = 1: the derivative stays inside and reaches
    both ends; difference quotients stay inside up to their rounding (1e-12 at h = 0.01)."""
    act = SlopeRestricted.named(name)
    assert act.beta == pytest.approx(beta, rel=1e-12) and act.alpha < 0 < act.beta
    assert act.alpha + act.beta == pytest.approx(1.0, abs=1e-13)
    d = _derivative(name, np.linspace(-30.0, 30.0, 6_000_001))
    assert act.alpha <= d.min() and d.max() <= act.beta
    assert d.max() > act.beta - 1e-9 and d.min() < act.alpha + 1e-9  # tight (grid 1e-5)
    x = np.linspace(-12.0, 12.0, 2401)
    q = np.diff(act.apply(x)) / np.diff(x)
    assert act.alpha - 1e-12 <= q.min() and q.max() <= act.beta + 1e-12


def test_gelu_slopes_do_not_depend_on_its_scale():
    """x Phi(k x) has g' = Phi(u) + u phi(u), u = k x: one interval for every k."""
    x = np.linspace(-30.0, 30.0, 600_001)
    for k in (0.5, 1.0, 1.7):
        act = SlopeRestricted.named("gelu", k)
        d = _derivative("gelu", x, k)
        assert act.alpha <= d.min() and d.max() <= act.beta
        q = np.diff(act.apply(x)) / np.diff(x)
        assert act.alpha - 1e-10 <= q.min() and q.max() <= act.beta + 1e-10


@pytest.mark.parametrize("module, name", [(torch.nn.GELU(), "gelu"), (torch.nn.SiLU(), "silu")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_modules_import_and_certify(module, name, dtype):
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), module, torch.nn.Linear(8, 6), module,
                            torch.nn.Linear(6, 2)).to(dtype)
    net = lipverify.load(m, input_shape=(4,))
    assert [n.activation.name for n in net.nodes] == [name, name]
    x = np.random.default_rng(0).standard_normal((7, 4))
    ref = m(torch.tensor(x, dtype=dtype)).detach().double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(net.forward(x), ref, atol=tol, rtol=tol)
    sdp = lipverify.bound(net, method="lipsdp-neuron", lower_bound=True)
    naive = lipverify.bound(net, method="naive").bound
    assert sdp.certified and sdp.lower_bound <= sdp.bound <= naive * (1 + 1e-9)
    assert sdp.bound < 0.8 * naive  # the QC with alpha < 0 still beats the norm product


def test_onnx_gelu_op_and_its_tanh_approximation():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [node("MatMul", ["x", "W"], ["h"]), node("Gelu", ["h"])]
    net = check(make_model(nodes, [1, 4], {"W": w.T.copy()}, opset=20), scale=2.0)
    assert net.nodes[0].activation.name == "gelu"
    tanh = [node("MatMul", ["x", "W"], ["h"]), node("Gelu", ["h"], approximate="tanh")]
    with pytest.raises(UnsupportedModelError, match="only the exact"):
        network_from_onnx(make_model(tanh, [1, 4], {"W": w.T.copy()}, opset=20))


def test_fused_op_names_are_not_standard_onnx_ops():
    """Our fused ops live in the lipverify domain: a standard-domain node that happens to be
    called GroupSortPair, Silu or Gelu (before opset 20) is refused, not converted."""
    nodes = [node("Silu", ["x"], ["h"]), node("GroupSortPair", ["h"], axis=1)]
    with pytest.raises(UnsupportedModelError) as exc:
        network_from_onnx(make_model(nodes, [1, 4], opset=18))
    assert {p.op_type for p in exc.value.problems} == {"Silu", "GroupSortPair"}


def test_one_entry_each():
    assert {"gelu", "silu"} <= set(ELEMENTWISE)
    assert math.isclose(ELEMENTWISE["silu"].numpy(np.array(1.0)), 1 / (1 + math.exp(-1)))
