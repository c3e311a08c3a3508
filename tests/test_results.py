"""Result records serialise to JSON without loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import lipverify
from lipverify.ir.activations import SlopeRestricted
from lipverify.results import BoundResult


def test_roundtrip_json_including_inf():
    net = lipverify.Network.sequential([np.eye(2), np.eye(2)], [SlopeRestricted.named("relu")])
    r = lipverify.bound(net, method="naive", lower_bound=True)
    back = BoundResult.from_dict(json.loads(r.to_json()))
    assert back == r
    inf = BoundResult.from_dict({**r.to_dict(), "bound": "inf"})
    assert math.isinf(inf.bound)
    assert "<table>" in r._repr_html_()
    assert "certified" in str(r)


def test_compare_returns_dataframe():
    net = lipverify.Network.sequential([np.eye(2), np.eye(2)], [SlopeRestricted.named("relu")])
    table = lipverify.compare([net, net], methods=["naive", "lower"])
    assert len(table) == 4
    assert set(table["method"]) == {"naive", "lower"}


def test_details_are_read_only_and_round_trip():
    import copy
    import pickle

    net = lipverify.Network.sequential([np.eye(2), 3 * np.eye(2)], [SlopeRestricted.named("relu")])
    r = lipverify.bound(net, method="lipsdp-neuron")
    with pytest.raises(TypeError, match="read-only"):
        r.details["gap"] = 0.0
    with pytest.raises(TypeError, match="read-only"):
        r.details.update(gap=0.0)
    for twin in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r),
                 lipverify.BoundResult.from_dict(r.to_dict())):
        assert twin.details == r.details
        with pytest.raises(TypeError):
            twin.details["x"] = 1
