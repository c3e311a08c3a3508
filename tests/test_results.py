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


def test_certified_derives_from_the_certificate_record():
    from lipverify.certify.record import DIRECT
    from lipverify.status import Outcome

    net = lipverify.Network.sequential([np.eye(2), 3 * np.eye(2)], [SlopeRestricted.named("relu")])
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    assert sdp.certified and sdp.certificate.kind == "lipsdp-l2" and sdp.certificate.ok
    assert sdp.certificate.body["rho"] == pytest.approx(9.0, rel=1e-6)
    assert sdp.status.outcome is Outcome.OPTIMAL and sdp.status.gap <= 1e-6
    naive = lipverify.bound(net, method="naive")
    assert naive.certified and naive.certificate.kind == DIRECT
    low = lipverify.bound(net, method="lower")
    assert not low.certified and low.certificate is None
    back = BoundResult.from_dict(json.loads(sdp.to_json()))
    assert back == sdp and back.status == sdp.status and back.certified


def test_results_stored_by_0_1_0_still_load():
    """Text status and the certificate payload in details (the 0.1.0 format)."""
    net = lipverify.Network.sequential([np.eye(2), 3 * np.eye(2)], [SlopeRestricted.named("relu")])
    new = lipverify.bound(net, method="lipsdp-neuron").to_dict()
    old = {k: v for k, v in new.items() if k != "certificate"}
    old["status"] = "optimal; optimality gap 1.00e-09"
    old["details"] = {**new["details"], "certificate": new["certificate"]["body"]}
    back = BoundResult.from_dict(old)
    assert back.certified and back.certificate.kind == "lipsdp-l2"
    assert back.status.optimal and "optimality gap 1.00e-09" in back.status.detail
    assert BoundResult.from_dict({**old, "certified": False}).certified is False
