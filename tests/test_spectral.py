"""The per-frequency LipSDP of stride-1 conv chains (lipverify.lmi.spectral, §7 [derived]):
rho* against the dense torus LMI, the solver against Clarabel, the certificate, the gap,
soundness against sampled lower bounds, and the reasons it does not apply."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lipverify
from lipverify.certify.spectral import certify_spectral, check
from lipverify.errors import NotApplicableError
from lipverify.ir.linear import Conv2d
from lipverify.lmi.spectral import SpectralLMI
from lipverify.solvers.spectral import (
    ascent_bound,
    dual_bound,
    kkt_multipliers,
    minimize,
    trajectory_ascent,
)


def conv_chain(rng, *, n=5, c=3, d=2, cin=1, m=3, act="relu", pads=(1, 1, 1, 1), k=3,
               dilation=(1, 1), groups=1):
    ops, ch, size = [], cin, n
    for layer in range(d):
        g = groups if layer > 0 else 1
        op = Conv2d(rng.normal(size=(c, ch // g, k, k)), (ch, size, size), pads=pads,
                    dilation=dilation, groups=g)
        ops.append(op)
        ch, size = c, op.out_shape[1]
    ops.append(rng.normal(size=(m, ops[-1].n_out)))
    return lipverify.Network.sequential(ops, [lipverify.SlopeRestricted.named(act)] * d,
                                        input_shape=(cin, n, n))


def torus_matrix(net, lmi, t, rho):
    """The dense real LMI of the masked torus network (module docstring, items 1-2)."""
    nh, nw = lmi.torus
    layers = net.chain()
    mats, offset, offsets = [], (0, 0), [(0, 0)]
    for layer in layers[:-1]:
        op = layer.weight
        kern = np.zeros((op.out_shape[0], op.in_shape[0]) + op.kernel.shape[2:])
        og, ig = op.out_shape[0] // op.groups, op.in_shape[0] // op.groups
        for j in range(op.groups):
            kern[j * og:(j + 1) * og, j * ig:(j + 1) * ig] = op.kernel[j * og:(j + 1) * og]
        co, ci, kh, kw = kern.shape
        mat = np.zeros((co, nh, nw, ci, nh, nw))
        for y in range(nh):
            for x in range(nw):
                for a in range(kh):
                    for b in range(kw):
                        mat[:, y, x, :, (y + a * op.dilation[0]) % nh,
                            (x + b * op.dilation[1]) % nw] += kern[:, :, a, b]
        mats.append(mat.reshape(co * nh * nw, ci * nh * nw))
        offset = ((offset[0] - op.pads[0]) % nh, (offset[1] - op.pads[1]) % nw)
        offsets.append(offset)
    w = layers[-1].weight.to_dense()
    c, h, wd = layers[-2].weight.out_shape
    wt = np.zeros((w.shape[0], c, nh, nw))
    wr = w.reshape(w.shape[0], c, h, wd)
    for i in range(h):
        for j in range(wd):
            wt[:, :, (offset[0] + i) % nh, (offset[1] + j) % nw] = wr[:, :, i, j]
    wt = wt.reshape(w.shape[0], -1)
    pix = nh * nw
    sizes = [lmi.channels[0] * pix] + [c_ * pix for c_ in lmi.channels[1:]]
    cuts = np.cumsum([0] + sizes)
    big = np.zeros((cuts[-1], cuts[-1]))
    big[:cuts[1], :cuts[1]] = rho * np.eye(sizes[0])
    for k, (tk, cm) in enumerate(zip(lmi.split(t), mats), start=1):
        a, b = lmi.slopes[k - 1]
        tt = np.repeat(tk, pix)
        sl, pl = slice(cuts[k], cuts[k + 1]), slice(cuts[k - 1], cuts[k])
        big[sl, sl] += 2 * np.diag(tt)
        big[pl, pl] += 2 * a * b * cm.T @ (tt[:, None] * cm)
        off = -(a + b) * cm.T * tt[None, :]
        big[pl, sl] += off
        big[sl, pl] += off.T
    big[cuts[-2]:, cuts[-2]:] -= wt.T @ wt
    return big


def dense_rho_star(net, lmi, t):
    m = torus_matrix(net, lmi, t, 0.0)
    n0 = lmi.channels[0] * lmi.frequencies
    n01, n11 = m[:n0, n0:], m[n0:, n0:]
    return float(np.linalg.eigvalsh(n01 @ np.linalg.solve(n11, n01.T) - m[:n0, :n0])[-1])


@pytest.mark.parametrize("kwargs", [
    {"act": "relu"},
    {"act": "tanh", "cin": 2},
    {"act": "gelu", "d": 3},
    {"pads": (1, 0, 1, 2)},            # asymmetric padding: windows move on the torus
    {"pads": (0, 0, 0, 0), "n": 7},    # valid convs: the feature maps shrink
    {"dilation": (2, 2), "pads": (2, 2, 2, 2)},
    {"groups": 3},
])
def test_rho_star_equals_the_dense_torus_lmi(kwargs):
    """Item 4's per-frequency recursion plus Woodbury is the dense torus LMI's rho*."""
    net = conv_chain(np.random.default_rng(1), **kwargs)
    lmi = SpectralLMI.from_network(net)
    t = lmi.anchor() * np.random.default_rng(2).uniform(0.6, 1.4, lmi.n_params)
    assert lmi.rho_star(t) == pytest.approx(dense_rho_star(net, lmi, t), rel=1e-9)


def test_torus_size_and_channels():
    net = conv_chain(np.random.default_rng(1), n=6, c=4, d=3, pads=(1, 0, 1, 2))
    lmi = SpectralLMI.from_network(net)
    # rows: 6 + max(1, 1) = 7; columns: 6 + max(0, 2) = 8, and the maps stay 6 x 6... 6 x 8
    assert lmi.channels == (1, 4, 4, 4) and lmi.torus[0] == 7 and lmi.torus[1] >= 8


def test_solver_reaches_clarabels_optimum_of_the_torus_lmi():
    """L-BFGS on the soft maximum meets the conic optimum of the same LMI (dense, Clarabel)."""
    import cvxpy as cp

    net = conv_chain(np.random.default_rng(3), n=4, c=2, d=2)
    lmi = SpectralLMI.from_network(net)
    t, rho, _ = minimize(lmi)
    tv = cp.Variable(lmi.n_params, nonneg=True)
    r = cp.Variable()
    m0 = torus_matrix(net, lmi, np.zeros(lmi.n_params), 0.0)
    # the LMI is affine in t: M(t) = M(0) + sum_i t_i (M(e_i) - M(0))
    e0 = np.zeros(m0.shape[0])
    e0[:lmi.frequencies] = 1.0
    expr = m0 + r * np.diag(e0)
    for i in range(lmi.n_params):
        e = np.zeros(lmi.n_params)
        e[i] = 1.0
        expr = expr + tv[i] * (torus_matrix(net, lmi, e, 0.0) - m0)
    prob = cp.Problem(cp.Minimize(r), [0.5 * (expr + expr.T) >> 0])
    prob.solve(solver="CLARABEL")
    assert rho == pytest.approx(r.value, rel=2e-6)
    assert lmi.rho_star(t) == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_gradient_matches_finite_differences(act):
    net = conv_chain(np.random.default_rng(4), n=5, c=3, d=3, cin=2, act=act)
    lmi = SpectralLMI.from_network(net)
    t = lmi.anchor() * np.random.default_rng(5).uniform(0.7, 1.3, lmi.n_params)
    rho = lmi.rho_star(t)
    for mu in (None, 1e-3 * rho):
        _, _, g = lmi.evaluate(t, mu, grad=True)
        fd = []
        for i in range(lmi.n_params):
            e = np.zeros_like(t)
            e[i] = 1e-6 * t[i]
            fd.append((lmi.evaluate(t + e, mu)[1] - lmi.evaluate(t - e, mu)[1]) / (2 * e[i]))
        assert np.abs(g - np.array(fd)).max() <= 1e-5 * np.abs(fd).max()


def test_certificate_is_tight_and_refuses_below_rho_star():
    net = conv_chain(np.random.default_rng(6), n=6, c=4, d=3, cin=2)
    lmi = SpectralLMI.from_network(net)
    t, rho, _ = minimize(lmi)
    assert check(lmi, t, rho * (1 + 1e-9))
    assert not check(lmi, t, rho * (1 - 1e-6))
    assert not check(lmi, -t, rho * 2)          # multipliers outside their set
    cert = certify_spectral(lmi, t, rho)
    assert cert.ok and math.sqrt(rho) <= cert.bound <= math.sqrt(rho) * (1 + 1e-8)


@pytest.mark.parametrize("seed,kwargs", [
    (7, {}), (8, {"act": "tanh", "c": 4}), (9, {"pads": (0, 0, 0, 0), "n": 7}),
    (10, {"dilation": (2, 2), "pads": (2, 2, 2, 2)}), (11, {"groups": 3, "d": 3}),
])
def test_bound_between_neuron_lipsdp_lower_and_naive(seed, kwargs):
    """Sound and no tighter than the exact LMI: lower <= lipsdp-neuron <= spectral <= naive
    (the torus and channel multipliers only relax the zero-padded neuron LMI)."""
    net = conv_chain(np.random.default_rng(seed), **kwargs)
    r = lipverify.bound(net, method="lipsdp-spectral", lower_bound=True)
    assert r.certified
    neuron = lipverify.bound(net, method="lipsdp-neuron").bound
    naive = lipverify.bound(net, method="naive").bound
    assert r.lower_bound <= neuron * (1 + 1e-6) <= r.bound * (1 + 2e-6)
    assert r.bound <= naive


def test_single_tap_conv_is_exact():
    """A conv whose only tap doubles, then ReLU and the identity: exactly 2.0."""
    k = np.zeros((1, 1, 3, 3))
    k[0, 0, 1, 1] = 2.0
    net = lipverify.Network.sequential([Conv2d(k, (1, 4, 4), pads=(1, 1, 1, 1)), np.eye(16)],
                                       [lipverify.SlopeRestricted.named("relu")],
                                       input_shape=(1, 4, 4))
    r = lipverify.bound(net, method="lipsdp-spectral")
    assert r.certified and 2.0 <= r.bound <= 2.0 * (1 + 1e-8)


def test_dual_bound_measures_the_gap():
    """Weak duality: the dual from the trajectories is below the optimum, and within 1e-5 of
    it at a converged point (Clarabel's optimum of the same LMI is in between)."""
    net = conv_chain(np.random.default_rng(12), n=6, c=4, d=3, cin=2)
    lmi = SpectralLMI.from_network(net)
    t, rho, _ = minimize(lmi)
    scaled, factors, out = lmi.balanced()
    low = dual_bound(scaled, t / factors, 16) * out
    assert rho * (1 - 1e-5) <= low <= rho * (1 + 1e-9)
    r = lipverify.bound(net, method="lipsdp-spectral")
    assert r.status.gap is not None and r.status.gap <= 1e-5


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_ascent_dual_is_below_the_optimum_and_nearly_meets_it(act):
    """The ascent's trajectories are dual feasible by construction: whatever the seed or
    rank, their bound never exceeds the converged optimum, and the best comes within 1%."""
    net = conv_chain(np.random.default_rng(19), n=6, c=4, d=3, cin=2, act=act)
    lmi = SpectralLMI.from_network(net)
    scaled, factors, out = lmi.balanced()
    _, rho, _ = minimize(lmi)
    lows = [ascent_bound(scaled, rank=rank, seed=seed, steps=steps) * out
            for rank, seed, steps in ((1, 0, 3000), (2, 1, 3000), (1, 2, 5))]
    assert all(0 < low <= rho * (1 + 1e-9) for low in lows)
    assert max(lows) >= rho * (1 - 1e-2)


def test_dual_start_is_near_the_optimum_and_both_starts_converge():
    """Complementary slackness on the ascent's trajectory gives multipliers within 10% of
    the optimum at once (rank 1 is tight on this chain); from either start the solve meets
    the same optimum."""
    net = conv_chain(np.random.default_rng(23), n=6, c=4, d=3, cin=1)
    lmi = SpectralLMI.from_network(net)
    scaled, _, out = lmi.balanced()
    value, xs = trajectory_ascent(scaled)
    start = kkt_multipliers(scaled, xs)
    assert start is not None and (start > 0).all()
    t_dual, rho_dual, info = minimize(lmi)
    t_fwd, rho_fwd, info_fwd = minimize(lmi, dual_start=False)
    assert info["start"] == "dual" and info_fwd["start"] == "forward"
    assert value * out <= rho_dual * (1 + 1e-9)
    assert scaled.rho_star(start) * out <= 1.1 * rho_dual
    assert rho_dual == pytest.approx(rho_fwd, rel=1e-5)


def test_forward_repair_makes_every_pivot_positive_definite():
    """Multipliers far too large in the second layer have no finite rho* at any common scale;
    scaling layers down in order restores it, and a repaired point is left as it is."""
    net = conv_chain(np.random.default_rng(24), n=5, c=3, d=3, cin=1)
    lmi = SpectralLMI.from_network(net)
    t = lmi.anchor()
    once = lmi.forward_repair(t)
    assert lmi.forward_repair(once) == pytest.approx(once, rel=1e-9)
    bad = t.copy()
    bad[3:6] *= 1e4
    assert all(lmi.rho_star(c * bad) == math.inf for c in (1e-3, 1.0, 1e3))
    fixed = lmi.forward_repair(bad)
    assert (fixed <= bad * (1 + 1e-12)).all()
    assert any(math.isfinite(lmi.rho_star(10.0 ** k * fixed)) for k in range(0, 16, 2))


def test_ascent_dual_measures_the_gap_where_the_primal_is_cut_short(monkeypatch):
    """A solve that ran out of time (two L-BFGS iterations) still reports a measured gap,
    from the ascent: its dual is below the converged optimum and within 1% of it."""
    import lipverify.methods.spectral as method

    net = conv_chain(np.random.default_rng(21), n=6, c=3, d=4, cin=1)
    lmi = SpectralLMI.from_network(net)
    _, rho, _ = minimize(lmi)

    def cut_short(lmi, **_):
        t, rho_short, info = minimize(lmi, max_iter=2)
        return t, rho_short, {**info, "timed_out": True}

    monkeypatch.setattr(method, "minimize", cut_short)
    r = lipverify.bound(net, method="lipsdp-spectral")
    dual = r.details["dual_bound"] ** 2
    assert r.certified and rho * (1 - 1e-2) <= dual <= rho * (1 + 1e-9)
    assert r.status.gap == pytest.approx(1 - math.sqrt(dual) / r.bound, rel=1e-6)


def test_not_applicable_lists_every_reason():
    rng = np.random.default_rng(13)
    ops = [Conv2d(rng.normal(size=(2, 1, 3, 3)), (1, 6, 6), stride=(2, 2), pads=(1, 1, 1, 1)),
           Conv2d(rng.normal(size=(2, 2, 3, 3)), (2, 3, 3), pads=(1, 1, 1, 1)),
           rng.normal(size=(3, 18))]
    net = lipverify.Network.sequential(
        ops, [lipverify.SlopeRestricted.named("relu"),
              lipverify.SlopeRestricted.named("leaky_relu", 0.1)], input_shape=(1, 6, 6))
    with pytest.raises(NotApplicableError) as err:
        SpectralLMI.from_network(net)
    assert "stride (2, 2)" in str(err.value) and "alpha <= 0 <= beta" in str(err.value)
    dense = lipverify.Network.sequential([np.eye(4), np.eye(4)],
                                         [lipverify.SlopeRestricted.named("relu")])
    with pytest.raises(NotApplicableError, match="not a Conv2d"):
        lipverify.bound(dense, method="lipsdp-spectral")


def test_many_output_rows_are_refused():
    from lipverify.lmi import spectral

    net = conv_chain(np.random.default_rng(14), n=5, c=2, d=1, m=spectral.MAX_OUTPUT_ROWS + 1)
    with pytest.raises(NotApplicableError, match="at most"):
        SpectralLMI.from_network(net)


def test_certificate_file_roundtrip_and_tamper():
    net = conv_chain(np.random.default_rng(15), n=5, c=3, d=2)
    r = lipverify.bound(net, method="lipsdp-spectral")
    cert = lipverify.certify.files.certificate_dict(r)
    ok = lipverify.check_certificate(net, cert)
    assert ok.valid and ok.bound >= r.bound * (1 - 1e-12)
    cert["certificate"]["rho"] = (r.bound * (1 - 1e-4)) ** 2
    assert not lipverify.check_certificate(net, cert).valid
    cert["certificate"]["params"] = cert["certificate"]["params"][:-1]
    assert "channel multipliers" in lipverify.check_certificate(net, cert).message


def test_auto_plans_the_spectral_stage_on_large_conv_chains():
    """Conv chains too large for the neuron LMI get lipsdp-spectral; small ones keep neuron."""
    from lipverify.methods.anytime import plan

    big = conv_chain(np.random.default_rng(16), n=14, c=16, d=4)
    assert [s.method for s in plan(big, "l2", 300.0)][-1] == "lipsdp-spectral"
    small = conv_chain(np.random.default_rng(17), n=5, c=2, d=2)
    assert "lipsdp-spectral" not in [s.method for s in plan(small, "l2", 300.0)]


def test_auto_improves_on_naive_with_the_spectral_stage(monkeypatch):
    """The anytime default on a conv chain above the neuron LMI's order (lowered here to keep
    the test short): the spectral stage's certified bound is returned, far below naive."""
    from lipverify.methods import anytime

    monkeypatch.setattr(anytime, "AUTO_MAX_ORDER", 1000)
    net = conv_chain(np.random.default_rng(18), n=10, c=8, d=4, m=10)
    r = lipverify.bound(net, time_limit=60)
    assert r.certified and r.method == "lipsdp-spectral"
    stages = {s["method"]: s["bound"] for s in r.details["auto_stages"]}
    assert r.bound <= stages["naive"] / 2
