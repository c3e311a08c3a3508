"""Sampled lower bound on the Lipschitz constant (FORMULATIONS.md §6.4).

``Lip_p(f) = sup_x ||J_f(x)||_p`` for the network with its actual biases (l2, or l_inf where
``||J||`` is the largest absolute row sum). We

1. sample points at several scales and compute their exact Jacobians (screening);
2. improve the best few: gradient ascent of ``u^T J(x) v`` (``u, v`` the current top singular
   pair, or for l_inf the best row and its sign vector) on a softplus surrogate of the
   piecewise-linear activations, alternated with power steps on the exact ``J`` at every
   iterate and random region hops (screening and search run in float32);
3. re-evaluate the exact Jacobians of the best points in float64 and confirm with a
   finite-difference witness ``||f(x + eps v) - f(x)|| / ||eps v||`` from
   :meth:`Network.forward`: a pair of actual points, hence a lower bound (up to the rounding
   of two float64 forward passes).

Every certified upper bound must be at least the returned value.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import UsageError
from ..ir.network import Network
from ..ir.torch_eval import to_torch
from ..numerics import UNIT_ROUNDOFF, eigh_all
from ..results import MethodOutput
from ..status import Status

#: Standard deviations of the Gaussian sample groups (plus one uniform [0, 1] group).
SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
#: Finite-difference step sizes of the witness, times max(1, ||x||), along a unit direction.
EPS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
#: Units of roundoff per layer charged to each forward pass of the witness.
WITNESS_ROUNDING = 4.0
#: Budget of float64 entries per Jacobian chunk (points x outputs x widest layer); at most
#: 32 points per chunk, so that a time limit is checked often.
CHUNK_ENTRIES = 2e7
#: Screening and search run in float32 (2-3x faster); the final points are re-evaluated in
#: float64 and the witness uses Network.forward.
SEARCH_DTYPE = torch.float32
#: Jacobians this small in float32 may have lost digits to underflow: redone in float64.
FLOAT32_SAFE = 1e-25
#: Ascent step (relative to the point's rms), hop radius, and steps between hops.
LR, HOP, HOP_EVERY = 0.2, 1.0, 4


def _sample(n: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian points at each scale in SCALES, then uniform points in [0, 1]^n; and the
    group number of each point."""
    groups = np.array_split(np.arange(samples), len(SCALES) + 1)
    parts = [s * rng.standard_normal((len(g), n)) for s, g in zip(SCALES, groups[:-1], strict=True)]
    parts.append(rng.uniform(0.0, 1.0, (len(groups[-1]), n)))
    return np.concatenate(parts), np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])


def _diverse_top(vals: np.ndarray, group: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` best values, taken round-robin over the groups (so that ties
    at one scale do not crowd out the other scales)."""
    rank = np.empty(len(vals), dtype=np.int64)
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        rank[idx[np.argsort(-vals[idx], kind="stable")]] = np.arange(len(idx))
    return np.lexsort((-vals, rank))[:top]


class _Jacobian:
    """Exact Jacobians ``(B, m, n)`` of a row-wise torch module, chunked to bound memory."""

    def __init__(self, module, network: Network):
        self.module, self.m = module, network.output_dim
        self.chunk = max(1, min(32, int(CHUNK_ENTRIES // (self.m * max(network.widths)))))

    def _one_chunk(self, x):
        x = x.detach().requires_grad_(True)
        y = self.module(x)  # rows are independent: one backward pass per output
        rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(self.m)]
        return torch.stack(rows, 1)

    def __call__(self, x: torch.Tensor, deadline: float = float("inf")) -> torch.Tensor:
        """Jacobians of the leading rows of ``x``: all of them unless ``deadline`` passes."""
        out = []
        for c in torch.split(x, self.chunk):
            if out and time.monotonic() > deadline:
                break
            out.append(self._one_chunk(c))
        return torch.cat(out)


def _eigh(gram: torch.Tensor):
    """Batched ``torch.linalg.eigh``; matrix by matrix through :mod:`lipverify.numerics`'s
    driver fallbacks when the batched call fails."""
    try:
        return torch.linalg.eigh(gram)
    except RuntimeError:  # torch.linalg.LinAlgError: a LAPACK driver failed
        pairs = [eigh_all(g, "sampled lower bound (Jacobian Gram)") for g in gram.numpy()]
        lam = torch.from_numpy(np.stack([w for w, _ in pairs])).to(gram.dtype)
        return lam, torch.from_numpy(np.stack([v for _, v in pairs])).to(gram.dtype)


def _norms_and_directions(jac: torch.Tensor, norm: str):
    """``||J||`` per point with unit output/input directions ``u, v``: ``u^T J v = ||J||``.

    l2: top singular pair, from the eigen-decomposition of the smaller Gram matrix;
    linf: ``u`` the row with the largest absolute sum, ``v`` the sign vector of that row.
    """
    b, m, n = jac.shape
    if norm == "linf":
        vals, rows = jac.abs().sum(-1).max(-1)
        u = torch.nn.functional.one_hot(rows, m).to(jac.dtype)
        best = jac[torch.arange(b), rows]
        return vals, u, torch.where(best >= 0, 1.0, -1.0).to(jac.dtype)
    # each Jacobian divided by a power of two near its largest entry: the Gram matrix of
    # weights of 1e150 would overflow, and the singular value scales back exactly
    tiny = torch.finfo(jac.dtype).tiny
    scale = torch.exp2(torch.ceil(torch.log2(jac.abs().amax(dim=(1, 2)).clamp(min=tiny))))
    js = jac / scale[:, None, None]
    if m <= n:
        lam, vecs = _eigh(js @ js.mT)
        u = vecs[:, :, -1]
        v = (u[:, None, :] @ js)[:, 0]
    else:
        lam, vecs = _eigh(js.mT @ js)
        v = vecs[:, :, -1]
        u = (js @ v[:, :, None])[..., 0]
    u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp(min=1e-30)
    v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp(min=1e-30)
    return lam[:, -1].clamp(min=0.0).sqrt() * scale, u, v


def _ascent_grad(module, x, u, v):
    """Gradient in ``x`` of ``sum_b u_b^T J(x_b) v_b`` by double backward (rows independent)."""
    x = x.detach().requires_grad_(True)
    jtu = torch.autograd.grad((module(x) * u).sum(), x, create_graph=True)[0]
    if not jtu.requires_grad:  # J does not depend on x (linear, or no surrogate for the kinks)
        return torch.zeros_like(x)
    # J may carry a graph that still does not reach x (piecewise-linear sorts): no gradient
    grad = torch.autograd.grad((jtu * v).sum(), x, allow_unused=True)[0]
    return torch.zeros_like(x) if grad is None else grad


def _power_step(module, x, v, norm):
    """One power step for ``||J(x)||_p`` from unit input direction ``v``.

    Returns ``(value, u, v')`` with ``value = u^T J v' <= ||J(x)||``: l2 takes
    ``u = Jv / ||Jv||``, ``v' = J^T u / ||J^T u||``; linf takes the row ``i`` maximising
    ``|(Jv)_i|`` and ``v'`` the sign vector of that row.
    """
    x = x.detach().requires_grad_(True)
    y = module(x)
    d = torch.zeros_like(y, requires_grad=True)  # J v as the derivative of J^T d in d
    jtd = torch.autograd.grad((y * d).sum(), x, create_graph=True)[0]
    w = torch.autograd.grad((jtd * v).sum(), d, retain_graph=True)[0]
    if norm == "l2":
        u = w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp(min=1e-30)
    else:
        rows = w.abs().argmax(1)
        u = torch.nn.functional.one_hot(rows, w.shape[1]).to(w.dtype) * w.sign()
    r = torch.autograd.grad((y * u).sum(), x)[0]
    if norm == "l2":
        val = torch.linalg.vector_norm(r, dim=1)
        return val, u, r / val[:, None].clamp(min=1e-30)
    return r.abs().sum(1), u, torch.where(r >= 0, 1.0, -1.0).to(r.dtype)


def _improve(network, norm, x, u, v, best_val, steps, rng, deadline, smooth_beta,
             dtype=SEARCH_DTYPE):
    """Ascend ``u^T J(x) v`` on the surrogate while power-stepping the exact ``J``; every
    HOP_EVERY steps also try a random hop per point, alternately near its best point and a
    fresh sample at its scale. Returns the best points (float64)."""
    exact = to_torch(network, dtype=dtype)
    smooth = to_torch(network, dtype=dtype, smooth=True, smooth_beta=smooth_beta)
    best_x = x
    x, u, v, best_val = (a.to(dtype) for a in (x, u, v, best_val))
    k = x.shape[0]
    scale = (x.pow(2).mean(1, keepdim=True).sqrt()).clamp(min=1e-2)
    best_v, traj = v, x

    def noise():
        return torch.from_numpy(rng.standard_normal(x.shape)).to(dtype)

    for t in range(steps):
        if time.monotonic() > deadline:
            break
        frac = 1.0 - t / steps
        # surrogate sharpness per point: relative to its scale, annealed up to smooth_beta
        smooth.smooth_beta = smooth_beta * (1.0 - 0.9 * frac) / scale.clamp(min=1.0)
        g = _ascent_grad(smooth, traj, u, v)
        rms = g.pow(2).mean(1, keepdim=True).sqrt()
        g = torch.where(rms > 0, g / rms.clamp(min=1e-30), noise())  # flat: random step
        cand, cand_v = traj + LR * frac * scale * g, v
        if t % HOP_EVERY == HOP_EVERY - 1:  # alternately a local hop and a fresh sample
            if (t // HOP_EVERY) % 2:
                hops = best_x.to(dtype) + (HOP * frac**2 + 1e-3) * scale * noise()
            else:
                hops = scale * noise()
            cand, cand_v = torch.cat([cand, hops]), torch.cat([v, best_v])
        vals, us, vs = _power_step(exact, cand, cand_v, norm)
        pick = vals.view(-1, k).argmax(0) * k + torch.arange(k)  # a hop replaces a worse step
        traj, u, v, cur = cand[pick], us[pick], vs[pick], vals[pick]
        v = torch.where(cur[:, None] > 0, v, noise() / x.shape[1] ** 0.5)  # J v = 0: restart v
        better = cur > best_val
        best_x = torch.where(better[:, None], traj.double(), best_x)
        best_v = torch.where(better[:, None], v, best_v)
        best_val = torch.where(better, cur, best_val)
    return best_x


def _witness(network: Network, norm: str, x: np.ndarray, v: np.ndarray):
    """Finite-difference ratios over steps ``EPS * max(1, ||x||)`` and +-v at each point;
    returns (ratio, eps, point index) for the largest.

    Each ratio is deflated by an estimate of the rounding error of the two float64 forward
    passes (``WITNESS_ROUNDING`` units of roundoff per layer, relative to the magnitudes of
    the outputs and of ``ratio * ||x||``, which stands for the intermediate values), so it
    stays below the exact ratio of its two points: undeflated, an orthogonal net with points
    at ||x|| ~ 300 and a step of 1e-5 returned 1 + 2e-9, above its constant 1.
    """
    p = 2 if norm == "l2" else np.inf
    b, n = x.shape
    scale = np.maximum(1.0, np.linalg.norm(x, ord=p, axis=1))
    steps = np.array([s * e for e in EPS for s in (1.0, -1.0)])
    y = x[:, None, :] + (steps[None, :, None] * scale[:, None, None]) * v[:, None, :]
    fx = network.forward(x)
    fy = network.forward(y.reshape(-1, n)).reshape(b, len(steps), -1)
    dx = y - x[:, None, :]
    num = np.linalg.norm(fy - fx[:, None, :], ord=p, axis=2)
    den = np.linalg.norm(dx, ord=p, axis=2)
    raw = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    mag = (np.linalg.norm(fx, ord=p, axis=1)[:, None] + np.linalg.norm(fy, ord=p, axis=2)
           + raw * (np.linalg.norm(x, ord=p, axis=1)[:, None] + np.linalg.norm(y, ord=p, axis=2)))
    err = WITNESS_ROUNDING * (len(network.nodes) + 2) * UNIT_ROUNDOFF * mag
    ratio = np.divide(np.maximum(num - err, 0.0), den, out=np.zeros_like(num), where=den > 0)
    ratio[~np.isfinite(ratio)] = 0.0  # a pass that overflowed witnesses nothing
    i, j = np.unravel_index(np.argmax(ratio), ratio.shape)
    return float(ratio[i, j]), EPS[j // 2], int(i)


def lower_bound(
    network: Network,
    *,
    norm: str = "l2",
    samples: int = 256,
    steps: int = 100,
    seed: int = 0,
    time_limit: float | None = None,
    top: int = 8,
    smooth_beta: float = 20.0,
    threads: int | None = 1,
    **_,
) -> MethodOutput:
    """Lower bound on ``Lip(f)`` in ``norm`` ("l2" or "linf"), witnessed by two actual points.

    >>> import numpy as np
    >>> from lipverify.ir.activations import SlopeRestricted
    >>> w1, w2 = np.array([[-2.0, -2.0], [-2.0, -1.0]]), np.array([[-1.0, 1.0]])
    >>> net = Network.sequential([w1, w2], [SlopeRestricted.named("relu")])
    >>> out = lower_bound(net, samples=64, steps=5)
    >>> round(out.bound, 6), out.certified
    (2.828427, False)

    ``samples`` random points are screened and the best ``top`` improved for ``steps`` steps;
    ``smooth_beta`` is the sharpness of the softplus surrogate (for points of scale <= 1; it
    is divided by the scale of larger points). With ``time_limit`` (seconds) the search stops
    early and the best points so far are witnessed. ``threads`` sets torch's intra-op threads
    for the call (restored afterwards; None keeps the current setting): the search is many
    small operations, which extra OpenMP threads slow down a lot on a busy machine.
    """
    if norm not in ("l2", "linf"):
        raise UsageError(f"lower bound supports norms l2 and linf, not {norm!r}")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or previous)
        return _lower_bound(network, norm, samples, steps, seed, time_limit, top, smooth_beta)
    finally:
        torch.set_num_threads(previous)


def _lower_bound(network, norm, samples, steps, seed, time_limit, top, smooth_beta):
    start = time.monotonic()
    deadline = start + (time_limit if time_limit is not None else float("inf"))
    rng = np.random.default_rng(seed)
    x, group = _sample(network.input_dim, max(samples, 1), rng)
    x = torch.from_numpy(x)
    dtype = SEARCH_DTYPE
    jac = _Jacobian(to_torch(network, dtype=dtype), network)(x.to(dtype), deadline)
    if not torch.isfinite(jac).all() or float(jac.abs().max()) < FLOAT32_SAFE:
        dtype = torch.float64  # float32 over- or underflows: weights like 1e150 or 1e-150
        jac = _Jacobian(to_torch(network, dtype=dtype), network)(x.to(dtype), deadline)
    vals, u, v = _norms_and_directions(jac, norm)
    best = torch.from_numpy(_diverse_top(vals.numpy(), group[: len(vals)], top))
    x = _improve(
        network, norm, x[best], u[best], v[best], vals[best], steps, rng, deadline, smooth_beta,
        dtype,
    )

    vals, _, dirs = _norms_and_directions(_Jacobian(to_torch(network), network)(x), norm)
    order = torch.argsort(vals, descending=True, stable=True)[:4]
    ratio, eps, i = _witness(network, norm, x[order].numpy(), dirs[order].numpy())
    witness_x = x[order[i]].numpy()
    details = {
        "jacobian_norm": float(vals.max()),
        "eps": eps,
        "samples": samples,
        "steps": steps,
        "seed": seed,
        "time_limited": time.monotonic() > deadline,
    }
    if network.input_dim <= 64:
        details["witness_x"] = witness_x.tolist()
    return MethodOutput(bound=ratio, certified=False, status=Status(), solver=None, details=details)
