"""LMI contract conformance (sdp.chain.LMI): chain and DAG kinds answer the same calls."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import lipverify
from lipverify.ir.activations import SlopeRestricted
from lipverify.lmi.chain import LMI, ChainLMI
from lipverify.lmi.dag import DagLMI

sys.path.insert(0, str(Path(__file__).parent))
from test_residual import resnet  # noqa: E402


def _lmis():
    rng = np.random.default_rng(5)
    relu = SlopeRestricted.named("relu")
    chain = ChainLMI.from_network(lipverify.Network.sequential(
        [rng.normal(size=(5, 3)), rng.normal(size=(4, 5)), rng.normal(size=(2, 4))], [relu] * 2))
    dag = DagLMI.from_network(resnet([(rng.normal(size=(6, 6)) * 0.4,
                                       rng.normal(size=(6, 6)) * 0.4)] * 2, rng, m=6))
    return {"chain": chain, "dag": dag}


@pytest.mark.parametrize("kind", ["chain", "dag"])
def test_contract(kind):
    lmi = _lmis()[kind]
    assert isinstance(lmi, LMI) and lmi.kind == kind
    anchor = lmi.anchor()
    rho = lmi.rho_star(anchor)
    assert np.isfinite(rho) and rho > 0
    m = lmi.assemble(anchor, rho * (1 + 1e-6) + 1e-9)
    assert m.shape == (lmi.order, lmi.order)
    assert np.linalg.eigvalsh((m + m.T) / 2).min() > -1e-8 * np.abs(m).max()
    lam1, soft, grad = lmi.soft_rho(anchor, 1e-3 * rho)
    assert lam1 == pytest.approx(rho, rel=1e-8) and soft >= lam1 and grad.shape == anchor.shape
    for k in range(1, len(lmi.qcs) + 1):
        cols, v = lmi.node_inputs(k)
        assert v.shape == (lmi.sizes[k], cols.size) and cols.max() < lmi.order
