"""The §8 gate: Rump's check accepts what is PD with margin and rejects what is not."""

from __future__ import annotations

import numpy as np
import pytest

from lipverify.certify.rump import (
    certified_gershgorin_norm,
    certified_inf_norm,
    certified_spectral_norm,
    certify_pd,
)
from lipverify.ir.linear import Conv2d, Dense, Diagonal, compose


def _with_min_eig(n, lam, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.linspace(1.0, 2.0, n)
    eig[0] = lam
    return (q * eig) @ q.T


def test_negative_control_rejects_slightly_indefinite():
    a = _with_min_eig(50, 0.0)
    scale = np.linalg.norm(a, 2)
    assert not certify_pd(_with_min_eig(50, -1e-9 * scale))
    assert certify_pd(_with_min_eig(50, 1e-9 * scale))


def test_radius_is_honoured():
    a = _with_min_eig(20, 1e-6)
    assert certify_pd(a)
    assert not certify_pd(a, radius=1e-5)


def test_negative_diagonal_rejected():
    assert not certify_pd(np.array([[-1.0]]))
    assert not certify_pd(np.array([[np.nan]]))


def test_spectral_norm_is_tight_and_above_svd():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(149, 138))
    up, est = certified_spectral_norm(w)
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    assert sigma <= up <= sigma * (1 + 1e-10)
    assert est == pytest.approx(sigma, rel=1e-12)


def test_spectral_norm_of_composite_includes_rounding_radius():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(30, 40))
    op = compose(Dense(w), Diagonal(np.full(30, 1.0 / 3.0)))
    dense, radius = op.dense_with_radius()
    assert radius is not None and radius.max() > 0
    up, _ = certified_spectral_norm(dense, radius)
    assert up >= np.linalg.svd(w, compute_uv=False)[0] / 3.0


def test_inf_and_gershgorin_norms_are_upper_bounds():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(20, 7))
    assert certified_inf_norm(w) >= np.abs(w).sum(axis=1).max()
    g = certified_gershgorin_norm(w)
    assert g >= np.linalg.svd(w, compute_uv=False)[0]
    assert g <= np.sqrt(np.abs(w).sum(0).max() * np.abs(w).sum(1).max()) * (1 + 1e-12)


def test_conv_dense_matches_adjoint_and_forward():
    rng = np.random.default_rng(6)
    conv = Conv2d(
        rng.normal(size=(4, 2, 3, 2)),
        (4, 6, 5),
        stride=(2, 1),
        pads=(1, 0, 1, 1),
        dilation=(1, 2),
        groups=2,
    )
    dense = conv.to_dense()
    x = rng.normal(size=(3, conv.n_in))
    y = rng.normal(size=(3, conv.n_out))
    np.testing.assert_allclose(conv.matmat(x), x @ dense.T, atol=1e-12)
    np.testing.assert_allclose(conv.rmatmat(y), y @ dense, atol=1e-12)
