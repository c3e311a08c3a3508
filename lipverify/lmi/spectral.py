"""LipSDP of a stride-1 conv chain, frequency by frequency on a torus (§7, §1.2) **[derived]**.

A chain ``x_k = sigma_k(conv_k(x_{k-1}) + b_k)`` of stride-1 2-D convolutions with zero
padding, ending in a dense map ``y = W x_d`` with few rows, has a dense LipSDP matrix of order
``sum_k c_k H_k W_k`` (100,548 for 16 layers of 32 channels on 14x14). With *channel*
multipliers (§7: ``T_k = diag(t_k) (x) I``) the whole LMI block-diagonalises by the 2-D DFT
into one small LMI per frequency, of order ``sum_k c_k``, except for the rank-``m`` output term.

**1. The torus embedding is exact.** Place every layer's feature map in an ``N_h x N_w``
torus: layer ``k``'s window at offset ``o_k = o_{k-1} - (pad_top, pad_left)`` (``o_0 = 0``).
A zero-padded cross-correlation then reads, for every output pixel ``u`` of its window,
``x[u + a]`` for taps ``a``, and these indices never wrap into the input window when
``N_h >= H_in + max(pad_top, pad_bottom)`` (same for columns): they land either in the
window or on torus pixels that hold zero. So with ``C_k`` the circular cross-correlation
``(C_k x)[u] = sum_a K_a x[u + a]`` and ``Pi_k`` the 0/1 mask of window ``k``, the network is
``x_k = Pi_k sigma_k(C_k x_{k-1} + b_k)`` on the torus, with ``x_0`` supported on its window,
and ``y = W_t x_d`` where ``W_t`` is ``W`` placed on window ``d``.

**2. The mask is an activation.** Coordinatewise, ``Pi sigma`` is ``sigma`` inside the window
and the zero map outside. The zero map has slope ``0``, which lies in ``[alpha, beta]`` when
``alpha <= 0 <= beta`` (ReLU, tanh, sigmoid, ...). The QC of §1.1 holds for every coordinate
whose slope lies in ``[alpha, beta]`` with its own multiplier, so LipSDP's ``M(rho, T) >= 0``
on the torus network (§1.2, ``W_k -> C_k``, ``W_L -> W_t``) bounds the masked network, and so
the original one. Inputs off the window only enlarge the set the bound holds on. Since the
torus form restricted to off-window hidden coordinates equal to zero is the zero-padded
network's form plus ``sum 2 alpha beta t v^2 <= 0``, the optimum is never below
``lipsdp-channel``'s on the dense LMI; for ReLU it differs only by what the off-window
coordinates add.

**3. Diagonalisation.** With the unitary 2-D DFT ``F`` on each channel, ``F C_k F^H`` is
block diagonal with ``P_k(w) = sum_a K_a exp(+2 pi i a.w / N)`` (``c_k x c_{k-1}``), and
``T_k = diag(t_k) (x) I`` commutes with ``F``. Hence ``M = blkdiag_w M_w - U U^H`` with

- ``M_w`` block tridiagonal of order ``n = sum_k c_k`` (§1.2 with ``W_k -> P_k(w)``):
  ``D_0 = rho I + 2 a_1 b_1 P_1^H T_1 P_1``, ``D_k = 2T_k + 2 a_{k+1} b_{k+1} P_{k+1}^H
  T_{k+1} P_{k+1}``, ``D_d = 2 T_d``, ``M_{k-1,k} = -(a_k + b_k) P_k^H T_k``;
- ``U`` (order-``n F`` by ``m``) nonzero only in the last block: ``U_w = What(w)^T`` with
  ``What[j, c, w] = |F|^{-1/2} sum_u W[j, c, u] exp(-2 pi i u.w / N)``, so that
  ``W_t x = sum_w U_w^H xhat(w)`` (Parseval).

**4. rho\\* (§8, "General rho\\*").** Let ``K_w`` be ``M_w`` without its input block, ``R_w``
the columns ``[M_{1,0}; 0; ...]`` and ``[0; ...; U_w]``, and ``Q_w = R_w^H K_w^{-1} R_w =
sum_k g_k^H S_k^{-1} g_k`` from the block LDL^T recursion of §2 (``S_k`` the pivots, ``g``
the forward substitution). By Woodbury, ``M >= 0`` iff every ``S_k > 0``, ``S = I_m -
sum_w Q_w^{dd} > 0`` and ``rho >= lambda_max(blkdiag_w(Q_w^{11} - G_w) + V S^{-1} V^H)``
with ``V`` stacking ``Q_w^{1d}`` and ``G_w = 2 a_1 b_1 P_1^H T_1 P_1``: an eigenvalue problem
of order ``c_0 |F|`` (225 on a 15x15 torus with one input channel), every other factorisation
of order ``c_k``.

**5. Certificate.** :mod:`lipverify.certify.spectral` checks ``M_w > mu_w I`` by Rump's
Cholesky test (§8) for every frequency, and the ``m x m`` Woodbury condition with rigorous
residual bounds, on transfer matrices computed by direct summation with entrywise radii (§7
"Rigour"). Nothing of order ``sum_k c_k H_k W_k`` is ever formed.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> from lipverify.ir.linear import Conv2d
>>> k = np.zeros((1, 1, 3, 3)); k[0, 0, 1, 1] = 2.0          # a conv that doubles
>>> net = Network.sequential([Conv2d(k, (1, 4, 4), pads=(1, 1, 1, 1)), np.eye(16)],
...                          [SlopeRestricted.named("relu")], input_shape=(1, 4, 4))
>>> lmi = SpectralLMI.from_network(net)
>>> lmi.torus, lmi.channels, lmi.frequencies
((5, 5), (1, 1), 25)
>>> 2.0 <= lmi.rho_star(lmi.anchor()) ** 0.5 < 2.001   # the anchor is nearly exact here
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import NotApplicableError
from ..ir.activations import SlopeRestricted
from ..ir.linear import Conv2d
from ..ir.network import Network
from ..numerics import TWIDDLE_ERROR, gamma, twiddles
from ..numerics import UNIT_ROUNDOFF as U

#: Output maps with more rows than this are not treated by the Woodbury term (rank m).
MAX_OUTPUT_ROWS = 256

#: Working memory allowed for the transfer matrices and the output term (bytes).
MAX_BYTES = 2 * 2**30

@dataclass(frozen=True, eq=False)
class Transfer:
    """One layer's ``P(w)`` for every frequency: ``value`` ``(F, c_out, c_in)`` complex, with
    ``|value - exact| <= radius`` entrywise in real and imaginary parts (``(c_out, c_in)``)."""

    value: np.ndarray
    radius: np.ndarray


def half_frequencies(torus: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One frequency of each conjugate pair (row-major indices) and its multiplicity 1 or 2."""
    nh, nw = torus
    idx, mult = [], []
    for u in range(nh):
        for v in range(nw):
            k, kc = u * nw + v, ((-u) % nh) * nw + (-v) % nw
            if k <= kc:
                idx.append(k)
                mult.append(1 if k == kc else 2)
    return np.array(idx), np.array(mult)


def frequency_grid(torus: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column frequency of each of the ``N_h N_w`` frequencies (row-major)."""
    uu, vv = np.meshgrid(np.arange(torus[0]), np.arange(torus[1]), indexing="ij")
    return uu.ravel(), vv.ravel()


def conv_transfer(op: Conv2d, torus: tuple[int, int]) -> Transfer:
    """``P(w) = sum_a K_a exp(+2 pi i a.w / N)`` by direct summation (§7 "Rigour")."""
    nh, nw = torus
    kernel = np.asarray(op.kernel, dtype=np.float64)
    cout, cin_g, kh, kw = kernel.shape
    g, cin = op.groups, op.in_shape[0]
    full = np.zeros((cout, cin, kh, kw))
    og = cout // g
    for j in range(g):  # grouped kernels as one block-diagonal kernel (exact zeros)
        full[j * og:(j + 1) * og, j * cin_g:(j + 1) * cin_g] = kernel[j * og:(j + 1) * og]
    dh, dw = op.dilation
    uu, vv = frequency_grid(torus)
    length = nh * nw
    cos_t, sin_t = twiddles(length)
    taps = [(p, q) for p in range(kh) for q in range(kw)]
    a = np.array([p * dh for p, _ in taps], dtype=np.int64)
    b = np.array([q * dw for _, q in taps], dtype=np.int64)
    idx = (a[:, None] * uu[None, :] * nw + b[:, None] * vv[None, :] * nh) % length  # exact
    kflat = full.reshape(cout * cin, len(taps))
    value = ((kflat @ cos_t[idx]) + 1j * (kflat @ sin_t[idx])).T.reshape(-1, cout, cin)
    coef = gamma(len(taps) + 4) * (1.0 + TWIDDLE_ERROR) + TWIDDLE_ERROR + op.kernel_rel_error
    radius = (coef * np.abs(full).sum(axis=(2, 3)) + len(taps) * 2.0**-1074) * 1.01
    return Transfer(np.ascontiguousarray(value), radius)


def output_transfer(w: np.ndarray, shape: tuple[int, int, int], offset: tuple[int, int],
                    torus: tuple[int, int], w_radius: np.ndarray | None = None) -> Transfer:
    """``U_w = What(w)^T``: ``(F, c, m)`` with ``What = |F|^{-1/2} sum_u W[:, c, u]
    exp(-2 pi i u.w / N)`` over the window at ``offset`` (direct summation, with radius)."""
    c, h, wd = shape
    nh, nw = torus
    m = w.shape[0]
    length = nh * nw
    cos_t, sin_t = twiddles(length)
    rows = (offset[0] + np.arange(h)) % nh
    cols = (offset[1] + np.arange(wd)) % nw
    ry, rx = np.meshgrid(rows, cols, indexing="ij")
    uu, vv = frequency_grid(torus)
    idx = (ry.ravel()[:, None] * uu[None, :] * nw + rx.ravel()[:, None] * vv[None, :] * nh)
    idx = idx % length  # exp(-i theta) = cos - i sin
    scale = 1.0 / math.sqrt(length)
    wf = np.asarray(w, dtype=np.float64).reshape(m * c, h * wd)
    value = (wf @ cos_t[idx] - 1j * (wf @ sin_t[idx])) * scale
    value = value.reshape(m, c, length).transpose(2, 1, 0)
    coef = (gamma(h * wd + 4) * (1.0 + TWIDDLE_ERROR) + TWIDDLE_ERROR) * (1.0 + 4 * U) + 4 * U
    rad = coef * np.abs(wf).sum(axis=1) * scale + h * wd * 2.0**-1074
    if w_radius is not None:  # the map itself rounded (e.g. a composed output map)
        rad = rad + np.asarray(w_radius, np.float64).reshape(m * c, h * wd).sum(axis=1) * scale
    rad = rad * 1.01
    return Transfer(np.ascontiguousarray(value), rad.reshape(m, c).T.copy())


@dataclass(frozen=True, eq=False)
class SpectralLMI:
    """The per-frequency LipSDP of a stride-1 conv chain (module docstring).

    ``transfers[k]`` is layer ``k+1``'s :class:`Transfer`; ``output`` the Woodbury term's
    ``U_w``; ``slopes[k]`` the ``(alpha, beta)`` of layer ``k+1``. Multipliers are one vector
    of ``sum_k c_k`` channel multipliers (layer after layer).
    """

    torus: tuple[int, int]
    channels: tuple[int, ...]
    transfers: tuple[Transfer, ...]
    output: Transfer
    slopes: tuple[tuple[float, float], ...]
    kind = "spectral"

    @property
    def frequencies(self) -> int:
        return self.torus[0] * self.torus[1]

    @property
    def depth(self) -> int:
        return len(self.transfers)

    @property
    def order(self) -> int:
        """Order of each frequency's LMI (input channels plus every hidden channel)."""
        return sum(self.channels)

    @property
    def n_params(self) -> int:
        return sum(self.channels[1:])

    @property
    def rows(self) -> int:
        return self.output.value.shape[2]

    def split(self, params) -> list[np.ndarray]:
        """The multiplier vector as one array per layer."""
        cuts = np.cumsum(self.channels[1:])[:-1]
        return np.split(np.asarray(params, dtype=np.float64), cuts)

    def project(self, params) -> np.ndarray:
        """§8 step 3: the nearest sound multipliers (channel multipliers are >= 0)."""
        return np.maximum(np.asarray(params, dtype=np.float64), 0.0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_network(cls, network: Network) -> SpectralLMI:
        """The LMI of ``network``, or :class:`NotApplicableError` listing every reason."""
        reasons = []
        if not network.is_sequential:
            raise NotApplicableError("the spectral form needs a plain chain (no skip "
                                     "connections)")
        layers = network.chain()
        hidden, last = layers[:-1], layers[-1]
        if not hidden:
            raise NotApplicableError("the spectral form needs at least one conv layer")
        for k, layer in enumerate(hidden, 1):
            op, act = layer.weight, layer.activation
            if not isinstance(op, Conv2d):
                reasons.append(f"layer {k} is {type(op).__name__}, not a Conv2d")
            elif op.stride != (1, 1):
                reasons.append(f"layer {k} has stride {op.stride} (only stride 1 is diagonal)")
            elif min(op.pads) < 0:
                reasons.append(f"layer {k} crops (negative padding)")
            if not isinstance(act, SlopeRestricted):
                reasons.append(f"layer {k}'s activation {act.describe()} is not elementwise "
                               "slope-restricted")
            elif not act.alpha <= 0.0 <= act.beta:
                reasons.append(f"layer {k}'s activation {act.describe()}: the torus mask needs "
                               "slopes alpha <= 0 <= beta")
        if reasons:
            raise NotApplicableError("the spectral form does not apply: " + "; ".join(reasons))
        ops = [layer.weight for layer in hidden]
        for prev, op in zip(ops, ops[1:]):
            if tuple(prev.out_shape) != tuple(op.in_shape):
                raise NotApplicableError("the spectral form needs conv layers that read the "
                                         "previous layer's feature map as is")
        torus = _torus(ops)
        offsets = [(0, 0)]
        for op in ops:
            top, left = op.pads[0], op.pads[1]
            offsets.append(((offsets[-1][0] - top) % torus[0], (offsets[-1][1] - left) % torus[1]))
        m = last.weight.n_out
        if m > MAX_OUTPUT_ROWS:
            raise NotApplicableError(f"the spectral form takes output maps of at most "
                                     f"{MAX_OUTPUT_ROWS} rows (this one has {m})")
        channels = (ops[0].in_shape[0], *(op.out_shape[0] for op in ops))
        freq = torus[0] * torus[1]
        # complex128 transfers and output term per frequency, and the order-c_0 F matrix H
        need = 16 * (freq * (sum(a * b for a, b in zip(channels, channels[1:]))
                             + channels[-1] * m) + (channels[0] * freq) ** 2)
        if need > MAX_BYTES:
            raise NotApplicableError(f"the spectral form would need {need / 2**30:.1f} GiB "
                                     f"(limit {MAX_BYTES / 2**30:.0f} GiB)")
        w_out, w_rad = last.weight.dense_with_radius()
        w_out = np.asarray(w_out, dtype=np.float64)
        out = output_transfer(w_out, ops[-1].out_shape, offsets[-1], torus, w_rad)
        if not all(np.isfinite(op.kernel).all() for op in ops) or not np.isfinite(w_out).all():
            raise NotApplicableError("the spectral form needs finite weights")
        return cls(torus, channels, tuple(conv_transfer(op, torus) for op in ops), out,
                   tuple((float(layer.activation.alpha), float(layer.activation.beta))
                         for layer in hidden))

    # ------------------------------------------------------------------ scaling
    def balanced(self) -> tuple[SpectralLMI, np.ndarray, float]:
        """A congruence (§2's balancing) giving every ``P_k`` and the output map unit norm.

        Returns ``(scaled, factors, out)``: multipliers ``t`` of ``self`` are ``factors *
        t'`` of ``scaled`` and ``rho = out * rho'`` (x_k scaled by ``a_k``: ``P_k ->
        P_k a_k / a_{k-1}``, ``t_k -> t_k / a_k^2``; the output scaled by ``c``)."""
        a, scales, transfers = 1.0, [], []
        for tr in self.transfers:
            norm = float(np.linalg.norm(tr.value, ord=2, axis=(1, 2)).max()) or 1.0
            transfers.append(Transfer(tr.value / norm, tr.radius / norm))
            a = a / norm
            scales.append(a)
        u = self.output.value / scales[-1]
        c = 1.0 / (float(np.linalg.norm(_gram_sum(u), ord=2)) ** 0.5 or 1.0)
        out = Transfer(u * c, self.output.radius * c / scales[-1])
        factors = np.concatenate([np.full(n, s * s / (c * c))
                                  for n, s in zip(self.channels[1:], scales)])
        return SpectralLMI(self.torus, self.channels, tuple(transfers), out, self.slopes), \
            factors, 1.0 / (c * c)

    def anchor(self) -> np.ndarray:
        """Strictly feasible layer-uniform multipliers (§6.1 style): with ``g_k = (a_k +
        b_k)^2 + 2 |a_k b_k|``, ``||P_k|| = p_k`` and ``||W|| = w``, ``t_d = 1.01 w^2`` and
        ``t_{k-1} = 1.01 g_k p_k^2 t_k`` make ``M(rho) > 0`` for ``rho > 1.01 g_1 p_1^2 t_1``
        (Young's inequality on each cross term)."""
        norms = [float(np.linalg.norm(tr.value, ord=2, axis=(1, 2)).max())
                 for tr in self.transfers]
        w2 = float(np.linalg.norm(_gram_sum(self.output.value), ord=2))
        t = [1.01 * max(w2, 1e-300)]
        for k in range(self.depth - 1, 0, -1):
            a, b = self.slopes[k]
            g = max((a + b) ** 2 + 2 * abs(a * b), 1e-12)
            t.append(1.01 * g * norms[k] ** 2 * t[-1])
        t.reverse()
        return np.concatenate([np.full(n, v) for n, v in zip(self.channels[1:], t)])

    def forward_start(self) -> np.ndarray | None:
        """ECLipsE-Fast's closed-form layer multipliers (§2b) on the per-frequency chain, or
        None when a layer's slopes have ``alpha beta != 0`` (the recursion below assumes the
        ``2 alpha beta P^H T P`` terms vanish).

        With ``S_0 = I`` and ``G_k(w) = P_k S_{k-1}^{-1} P_k^H``, ``t_k = 1 / ((a+b)^2
        max_w lambda_max(G_k))`` keeps every pivot ``S_k = 2 t_k I - (a+b)^2 t_k^2 G_k >= t_k I``.
        The scale of the whole vector (the output term is fixed) is left to the caller."""
        if any(a * b != 0.0 for a, b in self.slopes):
            return None
        s_inv = np.broadcast_to(np.eye(self.channels[0]), (self.frequencies,) + (
            self.channels[0],) * 2)
        out = []
        for tr, (a, b) in zip(self.transfers, self.slopes):
            p = tr.value
            g = p @ s_inv @ p.conj().transpose(0, 2, 1)
            g = 0.5 * (g + g.conj().transpose(0, 2, 1))
            top = float(np.linalg.eigvalsh(g)[:, -1].max()) * (a + b) ** 2
            t = 1.0 / max(top, 1e-300)
            s = 2.0 * t * np.eye(g.shape[1]) - (a + b) ** 2 * t * t * g
            s_inv = np.linalg.inv(s)
            out.append(np.full(g.shape[1], t))
        return np.concatenate(out)

    def forward_repair(self, params) -> np.ndarray | None:
        """``params`` with each layer's multipliers scaled down, first layer to last, until
        every pivot of the recursion is positive definite (None when a layer's slopes have
        ``alpha beta != 0``, as :meth:`forward_start`).

        With ``S_0 = I``, ``G_k = P_k S_{k-1}^{-1} P_k^H`` and ``lambda_k = (a+b)^2 max_w
        lambda_max(T_k^{1/2} G_k T_k^{1/2})``, scaling ``T_k`` by ``theta = min(1, 1 /
        lambda_k)`` gives ``S_k = 2 theta T_k - (a+b)^2 theta^2 T_k G_k T_k >= theta T_k``."""
        if any(a * b != 0.0 for a, b in self.slopes):
            return None
        s_inv = np.broadcast_to(np.eye(self.channels[0]), (self.frequencies,) + (
            self.channels[0],) * 2)
        out = []
        for tr, (a, b), t in zip(self.transfers, self.slopes, self.split(params)):
            p = tr.value
            g = p @ s_inv @ p.conj().transpose(0, 2, 1)
            root = np.sqrt(np.maximum(t, 0.0))
            h = root[:, None] * g * root[None, :]
            h = 0.5 * (h + h.conj().transpose(0, 2, 1))
            top = float(np.linalg.eigvalsh(h)[:, -1].max()) * (a + b) ** 2
            t = t * min(1.0, 1.0 / top) if top > 0 else t
            tt = np.diag(t)
            s = 2.0 * tt - (a + b) ** 2 * (t[:, None] * g * t[None, :])
            try:
                s_inv = np.linalg.inv(s)
            except np.linalg.LinAlgError:
                return None
            out.append(t)
        out = np.concatenate(out)
        return out if np.isfinite(out).all() and (out > 0).all() else None

    # ------------------------------------------------------------------ rho*
    def rho_star(self, params) -> float:
        """``rho*(t)`` (module docstring, item 4); ``inf`` outside the domain."""
        out = self.evaluate(params)
        return math.inf if out is None else max(out[0], 0.0)

    def evaluate(self, params, mu: float | None = None, grad: bool = False):
        """``(rho*, F_mu, grad F_mu)`` with the soft maximum ``F_mu = mu log tr exp(H/mu)``
        (``mu=None``: ``F = rho*``); ``None`` outside the domain. Torch, complex128.

        The gradient is the envelope formula of §2: for each eigenpair ``(lambda_j, v_j)``
        of ``H`` the worst-case trajectory ``z_j = (v_j, -N_11^{-1} N_10 v_j)`` has
        ``z_j^H M(lambda_j, t) z_j = 0``, so ``d lambda_j / d t_i = -z_j^H A_i z_j`` with
        ``A_i = dM/dt_i``; ``F_mu``'s gradient weighs them by their softmax weights."""
        import torch

        t = torch.from_numpy(np.asarray(params, dtype=np.float64))
        parts = self._input_matrix(torch, t)
        if parts is None:
            return None
        h, state = parts
        if not grad:
            lam = torch.linalg.eigvalsh(h)
            top = float(lam[-1])
            return top, _soft(lam.numpy(), mu), None
        lam, vec = torch.linalg.eigh(h)
        lam_np = lam.numpy()
        top = float(lam_np[-1])
        keep = lam_np >= top - 40.0 * mu if mu else lam_np >= top
        w = np.exp((lam_np[keep] - top) / mu) if mu else np.ones(int(keep.sum()))
        w = w / w.sum()
        v = vec[:, torch.from_numpy(np.flatnonzero(keep))] * torch.from_numpy(np.sqrt(w))
        g = self._gradient(torch, t, state, v)
        return top, _soft(lam_np, mu), g

    def _gradient(self, torch, t, state, v):
        """``-sum_j z_j^H A_i z_j`` for the (weighted) eigenvectors ``v`` (columns).

        ``z_j``'s hidden part is ``-K^{-1} R y_j`` per frequency with ``y_j = (v_j, s_j)``,
        ``s_j = S^{-1} sum_w (Q^{1d}_w)^H v_j(w)`` (Woodbury). So with ``Phi = K^{-1} R``
        (``c0 + m`` columns, one back substitution) and ``Gamma_w = sum_j y_j y_j^H`` every
        QC value is a diagonal of ``Phi_k Gamma Phi_l^H``: no per-eigenvector solves."""
        tensors, pos, flip = self._tensors(torch)
        y = self._y(torch, state, v)
        gamma_f = y @ y.conj().transpose(1, 2)
        gamma_f = torch.where(flip[:, None, None], gamma_f.conj(), gamma_f)
        # a conjugate frequency contributes Re diag(Phi conj(Gamma_f) Phi^H) (Phi its pair's)
        gamma_w = torch.zeros((tensors[0].shape[0],) + gamma_f.shape[1:], dtype=y.dtype)
        gamma_w.index_add_(0, pos, gamma_f)
        phis = self._phis(torch, state)
        out = []
        for k in range(1, self.depth + 1):
            a, b = self.slopes[k - 1]
            phi_g = phis[k] @ gamma_w
            xx = (phi_g * phis[k].conj()).real.sum(dim=(0, 2))  # sum_w diag(X_k X_k^H)
            pp = tensors[k - 1] @ phis[k - 1]
            px = (phi_g * pp.conj()).real.sum(dim=(0, 2))  # sum_w Re diag(X_k (P X_{k-1})^H)
            q = 2.0 * xx - 2.0 * (a + b) * px
            if a * b != 0.0:
                q = q + 2.0 * a * b * ((pp @ gamma_w) * pp.conj()).real.sum(dim=(0, 2))
            out.append(-q)
        return torch.cat(out).numpy()

    def _y(self, torch, state, v):
        """``y_j = (v_j(w), s_j)`` per frequency, ``s_j = S^{-1} sum_w (Q^{1d}_w)^H v_j(w)``."""
        _, _, _, q1d, s_chol = state
        freq, c0 = self.frequencies, self.channels[0]
        v = v.reshape(freq, c0, v.shape[1])
        s = torch.cholesky_solve((q1d.conj().transpose(1, 2) @ v).sum(0), s_chol)  # (m, nv)
        return torch.cat([v, s.expand(freq, -1, -1)], dim=1)  # (F, c0 + m, nv)

    def _phis(self, torch, state):
        """``Phi_k = (K^{-1} R)_k`` on the half grid (``Phi_0 = -[I 0]``): ``x_k = -Phi_k y``."""
        chols, offdiag, gs, _, _ = state
        freq, c0, d = gs[0].shape[0], self.channels[0], self.depth
        phis = [None] * (d + 1)
        eye = torch.zeros(freq, c0, gs[0].shape[2], dtype=gs[0].dtype)
        eye[:, :, :c0] = -torch.eye(c0, dtype=gs[0].dtype)
        phis[0] = eye  # x_0 = v = -Phi_0 y, as x_k = -Phi_k y
        nxt = None
        for k in range(d, 0, -1):  # back substitution of K Phi = R
            r = gs[k - 1] if nxt is None else gs[k - 1] - offdiag[k] @ nxt
            nxt = torch.cholesky_solve(r, chols[k - 1])
            phis[k] = nxt
        return phis

    def trajectories(self, params, rank: int) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """The ``rank`` top eigenvalues of ``H`` and their worst-case trajectories ``z_j``:
        ``xs[k]`` is ``(F, c_k, rank)`` (layer ``k``'s DFT coordinates, ``xs[0]`` the input),
        with ``z_j^H M(lambda_j, t) z_j = 0``. None outside the domain."""
        import torch

        parts = self._input_matrix(torch, torch.from_numpy(np.asarray(params, np.float64)))
        if parts is None:
            return None
        h, state = parts
        lam, vec = torch.linalg.eigh(h)
        r = min(rank, lam.shape[0])
        y = self._y(torch, state, vec[:, -r:])
        xs = [(-self._full(torch, phi) @ y).numpy() for phi in self._phis(torch, state)]
        return lam[-r:].numpy(), xs

    def _input_matrix(self, torch, t):
        """``blkdiag(Q^11 - G) + V S^{-1} V^H`` (order ``c_0 F``) and the recursion's state,
        or None if infeasible."""
        tensors = self._tensors(torch)[0]
        ts = torch.split(t, list(self.channels[1:]))
        freq, c0, m = tensors[0].shape[0], self.channels[0], self.rows
        d = self.depth
        chols, offdiag, gs = [], [None], []
        q = None
        for k in range(1, d + 1):
            p = tensors[k - 1]
            tk = ts[k - 1].to(p.dtype)
            a, b = self.slopes[k - 1]
            diag = torch.diag_embed(2.0 * tk).expand(freq, -1, -1)
            if k < d:
                an, bn = self.slopes[k]
                if an * bn != 0.0:
                    pn, tn = tensors[k], ts[k].to(p.dtype)
                    gram = (pn.conj().transpose(1, 2) * tn[None, None, :]) @ pn
                    diag = diag + 2.0 * an * bn * gram
            # right-hand sides in this block: [M_{1,0} | U] restricted to block k
            rhs = torch.zeros(freq, self.channels[k], c0 + m, dtype=p.dtype)
            if k == 1:
                rhs[:, :, :c0] = -(a + b) * tk[None, :, None] * p  # M_{1,0} = -(a+b) T_1 P_1
            if k == d:
                rhs[:, :, c0:] = tensors[-1]
            if k == 1:
                s, g = diag, rhs
            else:
                e = -(a + b) * p.conj().transpose(1, 2) * tk[None, None, :]  # M_{k-1,k}
                y = torch.cholesky_solve(e, chols[-1])
                s = diag - e.conj().transpose(1, 2) @ y
                g = rhs - y.conj().transpose(1, 2) @ gs[-1]
                offdiag.append(e)
            s = 0.5 * (s + s.conj().transpose(1, 2))
            chol, info = torch.linalg.cholesky_ex(s)
            if bool((info != 0).any()):
                return None
            z = torch.linalg.solve_triangular(chol, g, upper=False)
            q = z.conj().transpose(1, 2) @ z if q is None else q + z.conj().transpose(1, 2) @ z
            chols.append(chol)
            gs.append(g)
        q = self._full(torch, q)
        freq = q.shape[0]
        q11, q1d, qdd = q[:, :c0, :c0], q[:, :c0, c0:], q[:, c0:, c0:]
        s_out = torch.eye(m, dtype=q.dtype) - qdd.sum(0)
        s_out = 0.5 * (s_out + s_out.conj().T)
        s_chol, info = torch.linalg.cholesky_ex(s_out)
        if int(info) != 0:
            return None
        a1, b1 = self.slopes[0]
        blocks = q11
        if a1 * b1 != 0.0:
            p1, t1 = self._full(torch, tensors[0]), ts[0].to(tensors[0].dtype)
            blocks = blocks - 2.0 * a1 * b1 * (p1.conj().transpose(1, 2) * t1[None, None, :]) @ p1
        v = q1d.reshape(freq * c0, m)
        w = torch.linalg.solve_triangular(s_chol, v.conj().T, upper=False)  # L^{-1} V^H
        h = torch.block_diag(*blocks) if c0 > 1 else torch.diag(blocks[:, 0, 0])
        h = h + w.conj().T @ w
        return 0.5 * (h + h.conj().T), (chols, offdiag, gs, q1d, s_chol)

    def _tensors(self, torch):
        """Torch copies of the transfers and ``U`` on one frequency of each conjugate pair
        (:func:`half_frequencies`), and the maps back: ``pos[f]`` the representative of
        frequency ``f`` and ``flip[f]`` whether ``f`` is its conjugate (real weights give
        ``P(-w) = conj P(w)``, so every per-frequency quantity there is the conjugate)."""
        cache = self.__dict__.get("_torch")
        if cache is None:
            idx, _ = half_frequencies(self.torus)
            nh, nw = self.torus
            pos = np.empty(self.frequencies, dtype=np.int64)
            flip = np.zeros(self.frequencies, dtype=bool)
            for j, f in enumerate(idx.tolist()):
                u, v = divmod(f, nw)
                fc = ((-u) % nh) * nw + (-v) % nw
                pos[f], pos[fc] = j, j
                flip[fc] = fc != f
            half = [torch.from_numpy(np.ascontiguousarray(tr.value[idx]))
                    for tr in self.transfers]
            half.append(torch.from_numpy(np.ascontiguousarray(self.output.value[idx])))
            cache = (half, torch.from_numpy(pos), torch.from_numpy(flip))
            object.__setattr__(self, "_torch", cache)
        return cache

    def _full(self, torch, x):
        """A per-frequency stack on the half grid, on every frequency (conjugated where
        ``flip``)."""
        _, pos, flip = self._tensors(torch)
        x = x[pos]
        return torch.where(flip[:, None, None], x.conj(), x)


def _soft(lam: np.ndarray, mu: float | None) -> float:
    top = float(lam[-1])
    if not mu:
        return top
    return top + mu * math.log(float(np.exp((lam - top) / mu).sum()))


def _gram_sum(u: np.ndarray) -> np.ndarray:
    """``sum_w U_w^H U_w`` (the output map's Gram ``W W^T``, by Parseval)."""
    g = np.einsum("fcm,fcn->mn", u.conj(), u)
    return 0.5 * (g + g.conj().T)


def _torus(ops: list[Conv2d]) -> tuple[int, int]:
    """Smallest ``N_h x N_w`` on which no layer's reads wrap into its input window (item 1)."""
    nh = nw = 1
    for op in ops:
        _, h, w = op.in_shape
        _, ho, wo = op.out_shape
        top, left, bottom, right = op.pads
        nh = max(nh, h + max(top, bottom), ho, h)
        nw = max(nw, w + max(left, right), wo, w)
    return nh, nw
