"""The optimality gap: a weak-duality lower bound on the LipSDP optimum (lipverify.sdp.dual)."""

from __future__ import annotations

import pytest
from conftest import shared_path

import lipverify

#: (file, load options, published LipSDP-Neuron optimum): see ../shared/models/README.md
CASES = [
    ("exlipbab_iris_4x6x6x3_relu.npz", {}, 11.635340),
    ("lyr2n80test1.npz", {"activation": "relu"}, 0.737257),
]


@pytest.mark.parametrize("name, opts, optimum", CASES)
def test_dual_lower_bound_brackets_the_published_optimum(name, opts, optimum):
    r = lipverify.bound(shared_path("weights", name), method="lipsdp-neuron", **opts)
    low = r.details["dual_lower"]
    assert r.certified and low is not None
    assert low <= optimum * (1 + 2e-6) and r.bound >= optimum * (1 - 2e-6)
    assert r.details["gap"] < 1e-3
    assert "optimality gap" in r.status
