"""Certified spectral norm of a 2-D convolution without its dense matrix (FORMULATIONS.md §7).

:func:`certified_conv_norm` bounds ``||T||_2`` for the exact linear map ``T`` of a
:class:`~lipverify.ir.linear.Conv2d` (zero padding, stride, dilation, groups) by the norm of a
circular convolution that contains it, evaluated frequency by frequency.

**Why it is an upper bound** (proof sketch; §7 "Spectral norm of a single conv").

1. *Cropping.* Output row ``i < H_o`` reads padded rows ``i*s_h + p*d_h`` for taps
   ``p < k_h``, all below ``E_h = (H_o - 1) s_h + (k_h - 1) d_h + 1 <= H + pad_t + pad_b``.
   Input rows whose padded index is ``>= E_h`` are never read, so ``T = T' Crop`` with
   ``||Crop|| <= 1``. Same for columns. Likewise a kernel row (column) that meets only
   padding for every output never enters ``T`` and is dropped (this is an equality).
2. *Embedding (zero padding).* Pick ``N_h = s_h N'_h >= E_h`` and place the (cropped) input
   at offset ``(pad_t, pad_l)`` of a zero ``N_h x N_w`` grid: an isometry ``S_in``. Let ``C``
   be the circular cross-correlation ``(Cz)[o, m, n] = sum K[o, c, p, q]
   z[c, (m + p d_h) mod N_h, (n + q d_w) mod N_w]``. For ``m = i s_h`` with ``i < H_o`` the
   index ``m + p d_h <= E_h - 1 < N_h`` never wraps and the grid holds exactly the padded
   input there, so ``T' = S_out C S_in`` with ``S_out`` a selection of distinct outputs
   (``||S_out|| <= 1``). Hence ``||T|| <= ||S C||`` where ``S`` keeps every output on the
   stride lattice ``m = s_h i', n = s_w j'`` (``i' < N'_h``, ``j' < N'_w``).
3. *Stride (polyphase).* With ``z_r[j] = z[s j + r]`` (a permutation of the input, hence
   orthogonal) and ``p d = s a_p + r_p``, ``(S C z)[i'] = sum_p K_p z_{r_p}[(i' + a_p) mod N']``:
   a stride-1 circular cross-correlation on the ``N'_h x N'_w`` grid with ``s_h s_w c_in``
   input channels. Its norm is at most the unstrided ``||C||`` of §7 (``S`` is a coordinate
   selection), often clearly less, and exact for non-overlapping patches (stride = kernel).
   Along an axis with a single output (``H_o = 1``) any lattice step keeps that output, and
   step ``E_h`` gives ``N'_h = 1``: ``P`` is then the kernel itself as a matrix (exact).
4. *Diagonalisation.* For a circular cross-correlation ``y[m] = sum_a K_a z[m + a]`` the DFT
   gives ``yhat(w) = P(-w) zhat(w)`` with ``P(w) = sum_a K_a exp(-2 pi i a.w / N')`` (a
   ``c_out x c_in'`` complex matrix per frequency). The unitary DFT therefore block-
   diagonalises the operator and ``||S C|| = max_w ||P(w)||_2``. Conventions do not matter:
   flipping the kernel (convolution vs cross-correlation) or the sign of the exponent maps
   ``P(w)`` to ``P(-w) = conj(P(w))`` (real ``K``), and shifting the kernel's origin
   multiplies ``P(w)`` by a unimodular scalar; none of these changes a singular value or the
   max over the (symmetric) frequency grid. The same symmetry lets us visit only half of the
   frequencies. Groups make the operator block diagonal: the norm is the max over groups.

**Rigour.** ``P(w)`` is computed by direct summation over the taps with twiddle factors from
an exact integer phase, ``|fl(P) - P_exact| <= r`` entrywise (real and imaginary parts; it
covers a rounded kernel, ``exact_kernel=False``, with the radius of
:meth:`LinearOp.dense_with_radius`). Then ``||P_exact|| <= ||fl P|| + sqrt(2) ||r||_F``. The
norm of the float matrix ``fl P`` is certified through its real embedding
``M = [[Re P, -Im P], [Im P, Re P]]`` (same singular values, each twice): ``s^2 I - M M^T > 0``
is checked by Rump's shifted Cholesky (§8), batched over frequencies.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir.linear import Conv2d
from ..numerics import TWIDDLE_ERROR, blas_threads, eigvalsh_batched, gamma, round_up, twiddles
from ..numerics import UNIT_ROUNDOFF as U
from .rump import ETA

#: Working-memory budget of one frequency chunk (bytes); peak use is a small multiple.
CHUNK_BYTES = 128 * 2**20


def _lattice(op: Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """Lattice steps ``(s_h, s_w)`` and the smallest grid ``(N'_h, N'_w)`` with no wrap-around.

    The step is the stride, except along an axis with a single output: any step keeps that
    one output on the lattice, and step ``E`` gives ``N' = 1`` and the exact ``||K||``
    (docstring steps 1-3).
    """
    _, ho, wo = op.out_shape
    kh, kw = op.kernel.shape[2:]
    sh, sw = op.stride
    dh, dw = op.dilation
    eh = (ho - 1) * sh + (kh - 1) * dh + 1
    ew = (wo - 1) * sw + (kw - 1) * dw + 1
    sh = eh if ho == 1 else sh
    sw = ew if wo == 1 else sw
    return (sh, sw), (-(-eh // sh), -(-ew // sw))


def _live_taps(op: Conv2d) -> tuple[list[int], list[int]]:
    """Kernel rows and columns that meet a real input pixel for at least one output."""
    _, h, w = op.in_shape
    _, ho, wo = op.out_shape
    kh, kw = op.kernel.shape[2:]
    top, left = op.pads[:2]

    def live(k, d, s, n_out, pad, size):
        pos = np.arange(n_out)[:, None] * s + np.arange(k)[None, :] * d - pad
        return np.flatnonzero(((pos >= 0) & (pos < size)).any(axis=0)).tolist()

    return (
        live(kh, op.dilation[0], op.stride[0], ho, top, h),
        live(kw, op.dilation[1], op.stride[1], wo, left, w),
    )


def _blas_threads(order: int):
    """One BLAS thread for batches of small matrices (threads only add contention there)."""
    return blas_threads(1 if order <= 256 else None)


def _certify_chunk(a: np.ndarray, b: np.ndarray) -> float:
    """Certified ``max_f ||A_f + i B_f||_2`` for exact float matrices, batched over ``f``.

    ``a``, ``b`` have shape ``(F, m, n)`` with ``m <= n``. Returns ``s`` with
    ``||A_f + i B_f||_2 < s`` for every ``f`` (``inf`` only if every test fails).
    """
    nb, m, n = a.shape
    if not (np.any(a) or np.any(b)):
        return 0.0
    order = 2 * m
    x = np.concatenate([a, b], axis=2)  # rows of M's first block, up to exact signs
    g11 = x @ x.transpose(0, 2, 1)  # A A^T + B B^T
    g21 = np.concatenate([b, a], axis=2) @ np.concatenate([a, -b], axis=2).transpose(0, 2, 1)
    big = np.empty((nb, order, order))
    big[:, :m, :m] = g11
    big[:, m:, m:] = g11  # a valid evaluation of the same exact sums (other order)
    big[:, m:, :m] = g21
    big = np.tril(big)
    big = big + np.tril(big, -1).transpose(0, 2, 1)  # symmetric, read from the lower triangle

    # Estimates: eigenvalues of the Hermitian m x m Gram P P^* = G11 + i G21.
    herm = g11 + 1j * g21
    lam = float(eigvalsh_batched(herm, "convolution symbol")[:, -1].max())
    lam = max(lam, 0.0)
    # Row sums of |M| |M|^T for M = [[A, -B], [B, A]]: |M|^T 1 = [w; w] with
    # w = colsum(|A| + |B|), so every row sum is ((|A| + |B|) w)_i (both halves alike).
    ab = np.abs(a) + np.abs(b)
    rows = float((ab @ ab.sum(axis=1)[:, :, None]).max())
    # |fl(s2 I - fl(M M^T)) - (s2 I - M M^T)| <= gamma_{2n+2} (|M||M|^T + s2 I) entrywise,
    # x1.01 for the rounding of this radius, plus an underflow allowance (§8).
    rad_coef = gamma(2 * n + 2) * 1.01
    underflow = order * (2 * n + 4) * ETA
    k = (order + 1) * U
    rump_coef = k / (1.0 - 2.0 * k)
    trace_growth = 1.0 + 2.0 * gamma(order + 2)

    def attempt(s2: float) -> bool:
        amat = -big
        diag = np.einsum("fii->fi", amat)  # a writable view
        diag += s2
        d = np.einsum("fii->fi", amat)
        if not np.isfinite(amat).all() or (d < 0).any():
            return False
        r = rad_coef * (rows + s2) * (1.0 + 4.0 * U) + underflow
        tr = d.sum(axis=1) * trace_growth
        c = rump_coef * tr + 4.0 * ETA * order * (2.0 * (order + 1) + d.max(axis=1))
        c = c * (1.0 + 4.0 * U) + ETA
        shift = np.nextafter(c + r, np.inf)
        diag[...] = np.nextafter(d - shift[:, None], -np.inf)
        try:
            chol = np.linalg.cholesky(amat)
        except np.linalg.LinAlgError:
            return False
        return bool(np.isfinite(chol).all())

    # Margin predicted from the shift itself (§8 "margin needed"), then enlarged on failure.
    need = rad_coef * (rows + lam) + rump_coef * order * lam * trace_growth
    rel = 1e-12
    for _ in range(30):
        s2 = round_up(lam * (1.0 + rel) + 2.0 * need + 1e-300)
        if attempt(s2):
            return round_up(math.sqrt(s2))
        rel *= 8.0
        need *= 2.0
    # Fallback (never seen): ||P||_2 <= ||P||_F, rounded upward.
    fro2 = float((a * a + b * b).sum(axis=(1, 2)).max())
    return round_up(math.sqrt(round_up(fro2 * (1.0 + gamma(2 * m * n + 4)))))


def certified_conv_norm(op: Conv2d, extra_rel: float = 0.0) -> float:
    """Rigorous upper bound on ``||op||_2`` (exact map) via the circulant embedding of §7.

    Never materialises the ``n_out x n_in`` matrix; cost is one small SVD-sized problem per
    frequency of an ``ceil(E_h/s_h) x ceil(E_w/s_w)`` grid (see the module docstring).

    ``extra_rel``: the exact kernel may differ from the stored one by ``extra_rel |K|``
    entrywise on top of the op's own ``kernel_rel_error`` (a scale folded into the kernel,
    :func:`lipverify.ir.linear._fold_diagonal`). It enters the radius of ``fl(P)`` like a
    rounded kernel: ``|Delta P(w)| <= sum_taps |Delta K|`` since every exact twiddle has
    modulus 1.

    >>> import numpy as np
    >>> from lipverify.ir.linear import Conv2d
    >>> op = Conv2d(3.0 * np.eye(2).reshape(2, 2, 1, 1), (2, 5, 5))
    >>> b = certified_conv_norm(op)
    >>> 3.0 <= b <= 3.0 * (1 + 1e-9)
    True
    """
    if not isinstance(op, Conv2d):
        raise TypeError(f"certified_conv_norm needs a Conv2d, got {type(op).__name__}")
    if min(op.pads) < 0:
        raise ValueError("negative padding (cropping) is not supported")
    kernel = np.asarray(op.kernel, dtype=np.float64)
    if not np.isfinite(kernel).all():
        return math.inf
    cout, cin_g, kh, kw = kernel.shape
    g = op.groups
    og = cout // g
    (sh, sw), (nh, nw) = _lattice(op)
    dh, dw = op.dilation
    # A tap that only ever meets padding does not enter the map: drop it (exact).
    live_p, live_q = _live_taps(op)
    if not live_p or not live_q:
        return 0.0
    kernel = kernel[:, :, live_p][:, :, :, live_q]
    # Taps grouped by phase (r_h, r_w); each tap's lattice shift (a, b). Phases no tap reads
    # would only add zero columns to P (no effect on its singular values): drop them.
    taps = [(p, q) for p in live_p for q in live_q]
    phase = np.array([((p * dh) % sh) * sw + (q * dw) % sw for p, q in taps])
    phase = np.unique(phase, return_inverse=True)[1].ravel()
    n_phase = int(phase.max()) + 1
    cr = cin_g * n_phase  # input channels after the polyphase split
    shift_a = np.array([(p * dh) // sh for p, _ in taps], dtype=np.int64)
    shift_b = np.array([(q * dw) // sw for _, q in taps], dtype=np.int64)
    kflat = kernel.reshape(g, og, cin_g, len(taps))

    # Entrywise radius of fl(P) (real and imaginary parts alike), frequency independent:
    # twiddle error tau plus gamma_T summation (T <= kh*kw terms, +4 slack) plus the kernel's
    # own rounding radius (as LinearOp.dense_with_radius), x1.01 for computing it.
    tau = TWIDDLE_ERROR
    coef = gamma(kh * kw + 4) * (1.0 + tau) + tau
    coef += op.kernel_rel_error + extra_rel * 1.01
    absk = np.abs(kflat)
    rad = np.zeros((g, og, cr))
    for ph in range(n_phase):
        sel = phase == ph
        if sel.any():
            rad[:, :, ph * cin_g : (ph + 1) * cin_g] = absk[..., sel].sum(axis=-1)
    rad = (coef * rad + kh * kw * ETA) * 1.01
    fro = np.sqrt((rad * rad).sum(axis=(1, 2)) * (1.0 + gamma(og * cr + 4)))
    err = round_up(math.sqrt(2.0) * float(fro.max()) * (1.0 + 4.0 * U))

    # Half of the frequency grid suffices: P(-w) = conj(P(w)).
    uu, vv = np.meshgrid(np.arange(nh), np.arange(nw // 2 + 1), indexing="ij")
    uu, vv = uu.ravel(), vv.ravel()
    length = nh * nw
    cos_t, sin_t = twiddles(length)

    m, n = min(og, cr), max(og, cr)
    per_freq = 8 * g * (8 * m * n + 24 * m * m + 2 * kh * kw)
    chunk = max(1, CHUNK_BYTES // per_freq)
    best = 0.0
    with _blas_threads(2 * m):
        for start in range(0, uu.size, chunk):
            # exp(-2 pi i (a u / N'_h + b v / N'_w)) = exp(-2 pi i idx / L), idx exact (int64)
            u, v = uu[start : start + chunk], vv[start : start + chunk]
            idx = (shift_a[:, None] * u[None, :] * nw + shift_b[:, None] * v[None, :] * nh) % length
            re, im = _transfer(kflat, phase, cos_t[idx], sin_t[idx])
            best = max(best, _certify_chunk(re, im))
    return round_up(best + err)


def _transfer(
    kflat: np.ndarray, phase: np.ndarray, cos_w: np.ndarray, sin_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of ``P(w)`` for a chunk of frequencies, smaller side first.

    ``kflat`` is ``(groups, c_out/g, c_in/g, taps)``; ``cos_w``/``sin_w`` are ``(taps, F)``.
    Returns two ``(groups * F, m, n)`` arrays with ``m <= n`` (``P`` or ``P^H``).
    """
    g, og, cin_g, _ = kflat.shape
    n_phase = int(phase.max()) + 1
    cr = cin_g * n_phase
    nf = cos_w.shape[1]
    re = np.zeros((g, og, cr, nf))
    im = np.zeros((g, og, cr, nf))
    for ph in range(n_phase):
        sel = phase == ph
        if not sel.any():
            continue
        kph = kflat[..., sel].reshape(-1, int(sel.sum()))
        cols = slice(ph * cin_g, (ph + 1) * cin_g)
        # plain sums of kh*kw products (BLAS dgemm): |error| <= gamma_T sum |K| |twiddle|
        re[:, :, cols, :] = (kph @ cos_w[sel]).reshape(g, og, cin_g, nf)
        im[:, :, cols, :] = -(kph @ sin_w[sel]).reshape(g, og, cin_g, nf)
    re = re.transpose(0, 3, 1, 2).reshape(g * nf, og, cr)
    im = im.transpose(0, 3, 1, 2).reshape(g * nf, og, cr)
    if og > cr:  # P^H = Re^T - i Im^T has the same singular values and the smaller Gram
        re, im = re.transpose(0, 2, 1), -im.transpose(0, 2, 1)
    return np.ascontiguousarray(re), np.ascontiguousarray(im)
