"""QC registry conformance: every activation kind's QC keeps the contract of sdp.qc.QC.

For each kind: the anchor multipliers are feasible (projection leaves them unchanged) and make
``-Gww >= 2 x I``; every block has the layer's shape; the numpy blocks agree with the cvxpy
ones and their value gradient; the QC inequality holds on random pairs (the §0/§4 soundness
premise); layer-wide multipliers expand per neuron. (This suite found the Householder QC's
cvxpy blocks scaling lambda by the direction's entries: the solver optimised another problem
than the certificate checked.)
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from lipverify.ir.activations import GroupSort, Householder, MaxPool2d, SlopeRestricted
from lipverify.qc import QC, QC_REGISTRY, QC_SUMMARY, qc_for

ACTS = {
    "slope": [SlopeRestricted.named("relu"), SlopeRestricted.named("gelu"),
              SlopeRestricted.named("leaky_relu", 0.1)],
    "groupsort": [GroupSort(2), GroupSort(3)],
    "householder": [Householder(0.4)],
    "maxpool": [MaxPool2d((2, 2), (2, 2), (0, 0, 0, 0), (1, 4, 4))],
}
CASES = [(kind, act) for kind, acts in ACTS.items() for act in acts]


def test_every_registered_kind_is_covered_and_described():
    assert set(ACTS) == set(QC_REGISTRY) == set(QC_SUMMARY)


def _dense(b, n):
    return np.diag(b) if np.ndim(b) == 1 else np.asarray(b, dtype=float)


@pytest.mark.parametrize("kind, act", CASES, ids=[a.describe() for _, a in CASES])
def test_contract(kind, act):
    n = 16 if kind == "maxpool" else 6
    qc = qc_for(act, n)
    assert isinstance(qc, QC) and qc.kind in (kind, "groupsort")
    assert qc.slope_restricted == (kind == "slope")
    m = qc.num_params()
    anchor = qc.anchor_params(1.0)
    assert anchor.shape == (m,) and len(qc.lower_bounds()) == m
    np.testing.assert_allclose(qc.project(anchor), anchor)
    b = qc.blocks(anchor)
    n_out = act.out_dim(n) if kind == "maxpool" else n
    vv, vw, ww = _dense(b.vv, n), _dense(b.vw, n), _dense(b.ww, n_out)
    assert vv.shape == (n, n) and vw.shape == (n, n_out) and ww.shape == (n_out, n_out)
    assert np.linalg.eigvalsh(-ww - 2.0 * np.eye(n_out) * (1 - 1e-12)).min() >= -1e-9
    babs = qc.blocks_abs(anchor)
    assert np.all(np.abs(_dense(babs.ww, n_out)) >= np.abs(ww) - 1e-12)
    # cvxpy blocks at the same multipliers
    p = cp.Variable(m)
    p.value = anchor
    cvv, cvw, cww = qc.cvx_blocks(p)
    for got, want in ((cvv, vv), (cvw, vw), (cww, ww)):
        got = np.asarray(getattr(got, "value", got), dtype=float)
        np.testing.assert_allclose(_dense(got, n), want, atol=1e-12)
    assert all(c.value() for c in qc.constraints(p))
    # the QC holds on random pairs, and value_grad is its gradient in p (linear)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64)) * 3
    y = rng.normal(size=(n, 64)) * 3
    dv = x - y
    dw = (act.apply(x.T) - act.apply(y.T)).T
    val = np.einsum("ij,ij->j", dv, vv @ dv) + 2 * np.einsum("ij,ij->j", dv, vw @ dw) \
        + np.einsum("ij,ij->j", dw, ww @ dw)
    assert val.min() >= -1e-9 * np.abs(val).max()
    grad = qc.value_grad(dv, dw)
    assert np.isclose(float(np.dot(grad, anchor)), float(val.sum()), rtol=1e-9)
    # layer-wide multipliers expand to per-neuron ones with the same blocks
    layer = qc_for(act, n, per_neuron=False)
    expanded = qc.from_layer(layer.anchor_params(1.0))
    assert expanded.shape == (m,)
    np.testing.assert_allclose(_dense(qc.blocks(expanded).ww, n_out),
                               _dense(layer.blocks(layer.anchor_params(1.0)).ww, n_out))
    assert qc.anchor_factor > 0


def test_householder_solver_and_certificate_see_the_same_qc():
    """Regression: with lambda scaled by the direction in the solver's blocks, the l_inf LMI
    certified 312 (naive 337) in 11 s; with the certificate's blocks it certifies 36.3."""
    import lipverify
    from lipverify.ir.network import Network

    rng = np.random.default_rng(8)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(6, 6)), rng.normal(size=(2, 6))]
    net = Network.sequential(ws, [Householder(0.4)] * 2)
    linf = lipverify.bound(net, method="lipsdp-neuron", norm="linf")
    naive = lipverify.bound(net, method="naive", norm="linf").bound
    assert linf.certified and linf.bound < 0.15 * naive
    l2 = lipverify.bound(net, method="lipsdp-neuron", solver="scs")
    assert l2.certified and l2.bound < 0.6 * lipverify.bound(net, method="naive").bound
