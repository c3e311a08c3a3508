"""lipsdp-wide: LipSDP of one hidden layer reduced to order n_in + n_out (lipverify.methods.wide).

Truth used here: lipsdp-neuron and lipsdp-channel on the full LMI (the reduction is exact, so
the optima agree), the sampled lower bound, the naive product, certificates re-checked from
their files, and tampered certificates (a smaller rho must be rejected).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import SHARED_MODELS

import lipverify
from lipverify import Network, SlopeRestricted
from lipverify.errors import NotApplicableError
from lipverify.ir.activations import GroupSort
from lipverify.ir.linear import Conv2d, Dense, Diagonal, compose
from lipverify.ir.network import Affine, Node, Term
from lipverify.methods.anytime import plan
from lipverify.methods.wide import WideForm, applicable, certify_wide, solve


def one_layer(n0, n, m, act="relu", seed=0):
    rng = np.random.default_rng(seed)
    a = SlopeRestricted.named(*act) if isinstance(act, tuple) else SlopeRestricted.named(act)
    return Network.sequential([rng.normal(size=(n, n0)), rng.normal(size=(m, n))], [a],
                              biases=[rng.normal(size=n), np.zeros(m)])


def conv_layer(seed=0, channels=3):
    """Conv (1 -> C, 3x3, 6x6 input, padding 1), ReLU, then a composed output map (a conv,
    a diagonal scaling and a dense map: not exactly representable as one dense matrix)."""
    rng = np.random.default_rng(seed)
    conv = Conv2d(rng.normal(size=(channels, 1, 3, 3)), (1, 6, 6), pads=(1, 1, 1, 1))
    pre = Affine((Term(0, conv),), rng.normal(size=36 * channels))
    node = Node(SlopeRestricted.named("relu"), pre, (channels, 6, 6))
    conv2 = Conv2d(rng.normal(size=(2, channels, 2, 2)) / 3, (channels, 6, 6), stride=(2, 2))
    out_op = compose(compose(conv2, Diagonal(np.full(18, 1 / 3))), Dense(rng.normal(size=(4, 18))))
    return Network((1, 6, 6), (node,), Affine((Term(1, out_op),), np.zeros(4)))


@pytest.mark.parametrize("act", ["relu", "tanh", ("leaky_relu", 0.1), "sigmoid"])
@pytest.mark.parametrize("shape", [(5, 20, 3), (30, 120, 10)])
def test_wide_equals_lipsdp_neuron(act, shape):
    net = one_layer(*shape, act=act, seed=sum(shape))
    wide = lipverify.bound(net, method="lipsdp-wide", lower_bound=True)
    full = lipverify.bound(net, method="lipsdp-neuron")
    assert wide.certified and wide.details["multipliers"] == "neuron"
    assert wide.bound == pytest.approx(full.bound, rel=2e-5)
    assert wide.lower_bound <= wide.bound <= lipverify.bound(net, method="naive").bound
    assert wide.details["reduced_order"] == shape[0] + shape[2]
    # a measured gap from an exactly feasible dual point (measured: 1e-4 to 1.2e-3)
    assert wide.status.gap is not None and 0.0 <= wide.status.gap <= 5e-3
    assert wide.details["dual_bound"] <= full.bound * (1 + 1e-9)


def test_channel_multipliers_match_lipsdp_channel_on_a_conv_layer():
    net = conv_layer()
    wide = lipverify.bound(net, method="lipsdp-wide", multipliers="channel", lower_bound=True)
    chan = lipverify.bound(net, method="lipsdp-channel")
    neuron = lipverify.bound(net, method="lipsdp-wide", multipliers="neuron")
    assert wide.certified and chan.certified and neuron.certified
    assert wide.details["groups"] == 3 and neuron.details["groups"] == 108
    assert wide.bound == pytest.approx(chan.bound, rel=2e-5)
    assert wide.lower_bound <= neuron.bound <= wide.bound * (1 + 1e-9)


def test_the_certificate_is_rigorous_and_rechecked(tmp_path):
    net = conv_layer(seed=3)
    r = lipverify.bound(net, method="lipsdp-wide")
    path = tmp_path / "cert.json"
    lipverify.save_certificate(r, path)
    check = lipverify.check_certificate(net, path)
    assert check.valid and check.bound == pytest.approx(r.bound, rel=1e-12)
    form = WideForm.from_network(net, "neuron")
    s, rho_star = solve(form, math.inf)
    ok, rho = certify_wide(form, s, rho_star)
    assert ok and rho_star <= rho <= rho_star * (1 + 1e-9)
    assert not form.verify(s, rho_star * (1 - 1e-6))  # below rho*: K is indefinite
    assert not form.verify(-s, rho) and not form.verify(s, math.nan)
    body = dict(r.certificate.body, rho=r.certificate.body["rho"] * 0.99)
    cert = {"format": "lipverify-certificate/1", "model_sha256": None,
            "output_rows": None, "certificate": body}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cert))
    assert not lipverify.check_certificate(net, bad).valid


def test_not_applicable_says_why():
    rng = np.random.default_rng(0)
    deep = Network.sequential([rng.normal(size=(4, 3)), rng.normal(size=(4, 4)),
                               rng.normal(size=(2, 4))], [SlopeRestricted.named("relu")] * 2)
    assert "exactly one hidden layer" in applicable(deep)
    with pytest.raises(NotApplicableError, match="exactly one hidden layer"):
        lipverify.bound(deep, method="lipsdp-wide")
    gs = Network.sequential([rng.normal(size=(4, 3)), rng.normal(size=(2, 4))], [GroupSort(2)])
    assert "slope-restricted" in applicable(gs)
    with pytest.raises(NotApplicableError, match="channel multipliers need a conv"):
        lipverify.bound(one_layer(3, 4, 2), method="lipsdp-wide", multipliers="channel")
    with pytest.raises(NotApplicableError, match="l2"):
        lipverify.bound(one_layer(3, 4, 2), method="lipsdp-wide", norm="linf")


def test_auto_uses_it_where_the_full_lmi_is_too_large():
    net = one_layer(20, 7000, 3, seed=1)
    stages = plan(net, "l2", 300)
    assert [s.method for s in stages][-1] == "lipsdp-wide"
    assert [s.method for s in plan(one_layer(5, 20, 3), "l2", 300)][-1] == "lipsdp-neuron"


@pytest.mark.slow
@pytest.mark.shared
def test_convnet_avgpool_at_channel_level():
    """Measured: channel-level LipSDP 92.02 (naive 190.29, sampled lower 58.67) in about 3
    minutes on 2 cores; the full LMI has order 24112 and is never formed."""
    path = SHARED_MODELS / "onnx" / "Convnet_avgpool.onnx"
    if not path.exists():
        pytest.skip("../shared is absent")
    r = lipverify.bound(path, method="lipsdp-wide", lower_bound=True, time_limit=300)
    assert r.certified and r.details["multipliers"] == "channel"
    assert 58.6 <= r.lower_bound <= r.bound <= 95.0


def test_a_layer_too_wide_for_the_dense_certificate_goes_to_lipsdp_wide():
    """Order 35023: the full LMI's dense certificate would need over 9 GiB and is refused up
    front, naming what fits; auto certifies it through the reduced form (order 23)."""
    net = one_layer(20, 35000, 3, seed=4)
    with pytest.raises(NotApplicableError, match="lipsdp-wide for one hidden layer"):
        lipverify.bound(net, method="lipsdp-neuron")
    r = lipverify.bound(net, lower_bound=True, time_limit=20)
    assert r.method == "lipsdp-wide" and r.certified
    assert r.lower_bound <= r.bound < r.details["auto_stages"][0]["bound"]
