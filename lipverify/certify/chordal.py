"""Clique-by-clique certificate of a chain LMI (FORMULATIONS.md §3 and §8 "Chordal form").

``M(rho, T) = sum_k E_k^T Z_k E_k`` holds *identically* for any symmetric splitting
matrices ``Q_1..Q_{L-2}`` (they cancel), with ``Q_0 = rho I`` and ``Q_{L-1} = W_L^T W_L``::

    Z_k = [[Q_{k-1} - W_k^T Gvv_k W_k,  -W_k^T Gvw_k],
           [-Gvw_k^T W_k,               -Gww_k - Q_k]]          (§3, §4 insertion rule)

So proving every ``Z_k > 0`` (each by Rump's shifted Cholesky with its own assembly radius,
:func:`lipverify.certify.rump.certify_pd`) proves ``M > 0``. Consecutive cliques may be merged
into segments (a tridiagonal piece of ``M`` between two splitting matrices, order <=
``SEGMENT_ORDER``): the same identity with fewer ``Q_k``, hence fewer margins to carry.
The ``Q_k`` are ordinary float64 matrices chosen by us: the backward Schur recursion of §2
in floating point (or the forward one, :class:`ForwardChordal`), plus a small diagonal
margin so that each ``Z_k`` is strictly positive definite at its *own* scale. Their
rounding never matters for soundness (whatever floats they are, they cancel exactly); it
only decides whether the check passes.

Why not one dense Cholesky of ``M``: on deep or badly scaled chains the smallest eigenvalue
of ``M`` near ``rho*`` sits ~1e-15 below its largest entries, under Rump's shift for the
full order, while every clique keeps a healthy relative margin. It is also cheaper:
``sum_k (n_{k-1} + n_k)^3`` instead of ``(sum_k n_k)^3``, in memory of one clique.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ..lmi.chain import ChainLMI, as_matrix, quad, rmul
from ..numerics import gamma, lambda_max
from .rump import certify_pd

#: First relative margin of each clique's Schur complement, then x8 per failed check.
FIRST_MARGIN = 2.0**-40
LAST_MARGIN = 2.0**-8


class Clique:
    """Blocks of clique k without its Q terms: ``Z_k = [[Q_{k-1} + a, b], [b^T, c - Q_k]]``,
    with their absolute-value twins for the assembly radius (§8). Assembled and checked as
    a :class:`_Segment` (of one clique or several)."""

    def __init__(self, a, b, c, a_abs, b_abs, c_abs, inner: int, weight_rad=None):
        self.a, self.b, self.c = a, b, c
        self.a_abs, self.b_abs, self.c_abs = a_abs, b_abs, c_abs
        self.inner = inner
        self.weight_rad = weight_rad  # extra radius from weights known up to a radius
        self.sizes = (a.shape[0], c.shape[0])


def chain_cliques(lmi: ChainLMI, params) -> list[Clique]:
    out = []
    splits = lmi.split(params)
    last = len(lmi.qcs)
    for k, (qc, p) in enumerate(zip(lmi.qcs, splits), start=1):
        w, r = lmi.weights[k - 1], lmi.radii[k - 1]
        w_abs = np.abs(w) + (0 if r is None else r)
        g, g_abs = qc.blocks(p), qc.blocks_abs(p)
        n_prev = w.shape[1]
        a = -quad(w, g.vv) if np.any(g.vv) else np.zeros((n_prev, n_prev))
        a_abs = quad(w_abs, g_abs.vv) if np.any(g_abs.vv) else np.zeros((n_prev, n_prev))
        b, b_abs = -rmul(w.T, g.vw), rmul(w_abs.T, g_abs.vw)
        c, c_abs = -as_matrix(g.ww), as_matrix(g_abs.ww)
        inner = max(w.shape)
        extra = None
        if r is not None:  # |W| + r instead of |W|: the difference is the weights' own radius
            plain = np.abs(w)
            ea = (quad(w_abs, g_abs.vv) - quad(plain, g_abs.vv)) if np.any(g_abs.vv) \
                else np.zeros_like(a)
            eb = rmul(w_abs.T, g_abs.vw) - rmul(plain.T, g_abs.vw)
            extra = [ea, eb, np.zeros_like(c)]
        if k == last:  # Q_{L-1} = W_L^T W_L is part of this clique's bottom block
            wl, rl = lmi.weights[-1], lmi.radii[-1]
            wl_abs = np.abs(wl) + (0 if rl is None else rl)
            c = c - wl.T @ wl
            c_abs = c_abs + wl_abs.T @ wl_abs
            inner = max(inner, wl.shape[0])
            if rl is not None:
                extra = extra or [np.zeros_like(a), np.zeros_like(b), np.zeros_like(c)]
                extra[2] = extra[2] + wl_abs.T @ wl_abs - np.abs(wl).T @ np.abs(wl)
        weight_rad = None if extra is None else np.block([[extra[0], extra[1]],
                                                          [extra[1].T, extra[2]]])
        out.append(Clique(a, b, c, a_abs, b_abs, c_abs, inner, weight_rad))
    return out


def dag_cliques(lmi, params) -> list[DagClique]:
    """The cliques of a residual network's LMI over its groups (§5c): clique ``g`` holds the
    QC terms of group ``g``'s nodes (and the output term in the last), on the columns of
    groups ``g - 1`` and ``g``, with the same radii as the monolithic certificate. They are
    assembled when read, one at a time (:class:`DagClique`)."""
    source = _DagSource(lmi, params)
    sizes = lmi.group_sizes
    return [DagClique(source, g, (sizes[g - 1], sizes[g]), lmi.clique_inner(g))
            for g in range(1, len(sizes))]


class _DagSource:
    """Clique matrices of one DAG LMI at fixed multipliers; keeps only the last clique read
    (plain, and absolute with its weight radius), so that memory holds one clique."""

    def __init__(self, lmi, params):
        self.lmi, self.params = lmi, params
        self._plain: tuple[int, np.ndarray] | None = None
        self._abs: tuple[int, np.ndarray, np.ndarray | None] | None = None

    def plain(self, g: int) -> np.ndarray:
        if self._plain is None or self._plain[0] != g:
            self._plain = None
            self._plain = (g, self.lmi.clique(self.params, g))
        return self._plain[1]

    def absolute(self, g: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._abs is None or self._abs[0] != g:
            self._abs = None
            m_abs = self.lmi.clique(self.params, g, absolute=True)
            extra = self.lmi.clique(self.params, g, absolute=True, radii=False)
            np.subtract(m_abs, extra, out=extra)  # the weights' own radius
            self._abs = (g, m_abs, extra if np.any(extra) else None)
        return self._abs[1], self._abs[2]


class DagClique:
    """Clique ``g`` of a grouped DAG LMI with the interface of :class:`Clique`, its blocks
    read from the shared :class:`_DagSource` (assembled again when another clique was read
    in between)."""

    def __init__(self, source: _DagSource, g: int, sizes: tuple[int, int], inner: int):
        self.source, self.g, self.sizes, self.inner = source, g, sizes, inner

    def _part(self, m: np.ndarray, which: str) -> np.ndarray:
        n = self.sizes[0]
        return {"a": m[:n, :n], "b": m[:n, n:], "c": m[n:, n:]}[which]

    a = property(lambda self: self._part(self.source.plain(self.g), "a"))
    b = property(lambda self: self._part(self.source.plain(self.g), "b"))
    c = property(lambda self: self._part(self.source.plain(self.g), "c"))
    a_abs = property(lambda self: self._part(self.source.absolute(self.g)[0], "a"))
    b_abs = property(lambda self: self._part(self.source.absolute(self.g)[0], "b"))
    c_abs = property(lambda self: self._part(self.source.absolute(self.g)[0], "c"))
    weight_rad = property(lambda self: self.source.absolute(self.g)[1])


#: Consecutive cliques are merged into segments of at most this order (one Rump test each):
#: fewer splitting matrices, so fewer margins to propagate through deep chains.
SEGMENT_ORDER = 600


class _Segment:
    """Consecutive cliques ``k..l`` as one tridiagonal matrix: top-left ``Q_{k-1} + a_k``,
    interior ``c_j + a_{j+1}`` (the LMI's own diagonal blocks), bottom-right ``c_l - Q_l``."""

    def __init__(self, cliques: list[Clique]):
        self.cliques = cliques
        sizes = [cliques[0].sizes[0]] + [c.sizes[1] for c in cliques]
        self.offs = np.concatenate([[0], np.cumsum(sizes)])
        self.inner = max(c.inner for c in cliques)

    def _place(self, parts) -> np.ndarray:
        m = np.zeros((self.offs[-1], self.offs[-1]))
        for j, (a, b, c) in enumerate(parts):
            o0, o1, o2 = self.offs[j], self.offs[j + 1], self.offs[j + 2]
            m[o0:o1, o0:o1] += a
            m[o0:o1, o1:o2] += b
            m[o1:o2, o0:o1] += b.T
            m[o1:o2, o1:o2] += c
        return m

    def _ends(self, m, q_prev, q_next, sign: float) -> np.ndarray:
        n = self.offs[1]
        m[:n, :n] += q_prev if sign > 0 else np.abs(q_prev)
        if q_next is not None:
            k = self.offs[-2]
            m[k:, k:] += -q_next if sign > 0 else np.abs(q_next)
        return m

    def assemble(self, q_prev, q_next):
        m = self._place([(c.a, c.b, c.c) for c in self.cliques])
        return self._ends(m, q_prev, q_next, 1.0)

    def radius(self, q_prev, q_next):
        z_abs = self._ends(self._place([(c.a_abs, c.b_abs, c.c_abs) for c in self.cliques]),
                           q_prev, q_next, -1.0)
        rad = z_abs
        rad *= gamma(2 * self.inner + 8) * 1.01  # §8 assembly radius
        for j, c in enumerate(self.cliques):
            if c.weight_rad is not None:
                o0, o2 = self.offs[j], self.offs[j + 2]
                rad[o0:o2, o0:o2] += c.weight_rad
        rad *= 1.0 + 1e-12
        return rad

    def schur(self, q_next) -> np.ndarray | None:
        """The smallest admissible ``Q_{k-1}``: the backward recursion (§2) through the
        segment, ``b_k Y^-1 b_k^T - a_k``; None if a pivot is not positive definite."""
        last = self.cliques[-1]
        y = last.c if q_next is None else last.c - q_next
        for j in range(len(self.cliques) - 1, -1, -1):
            clq = self.cliques[j]
            try:
                chol = scipy.linalg.cho_factor((y + y.T) / 2.0, lower=True, check_finite=False)
            except (scipy.linalg.LinAlgError, ValueError):
                return None
            sch = clq.b @ scipy.linalg.cho_solve(chol, clq.b.T, check_finite=False)
            y = (sch - clq.a) if j == 0 else (self.cliques[j - 1].c + clq.a - sch)
        return (y + y.T) / 2.0


def _segments(cliques: list[Clique], max_order: int) -> list[_Segment]:
    out, cur = [], []
    for clq in cliques:
        order = cur[0].sizes[0] + sum(c.sizes[1] for c in cur) if cur else 0
        if cur and order + clq.sizes[1] > max_order:
            out.append(_Segment(cur))
            cur = []
        cur.append(clq)
    out.append(_Segment(cur))
    return out


class ChordalCertificate:
    """The splitting matrices for fixed multipliers, chosen backward (one per segment
    boundary), each segment after the first already certified; :meth:`check` then tests
    the first segment for a given rho.

    ``rho_star`` is the smallest rho the first segment can take with these ``Q`` (>= the
    exact rho*(T) of §2 by the margins added on the way).
    """

    def __init__(self, lmi: ChainLMI, params, max_order: int = SEGMENT_ORDER, cliques=None):
        self.ok = False
        self.rho_star = math.inf
        self.segments = _segments(cliques or chain_cliques(lmi, params), max_order)
        q_next = None
        for seg in self.segments[:0:-1]:  # last .. second segment choose their Q_{k-1}
            s = seg.schur(q_next)
            if s is None or not np.isfinite(s).all():
                return
            base = _pivot_margin(s)
            delta = FIRST_MARGIN
            while True:  # the smallest margin that this segment certifies with
                q_prev = s + np.diag(delta * base)
                if certify_pd(seg.assemble(q_prev, q_next), seg.radius(q_prev, q_next),
                              overwrite=True):
                    break
                delta *= 8.0
                if delta > LAST_MARGIN:
                    return
            q_next = q_prev
        self.q1 = q_next  # Q after the first segment (None: it is the whole chain)
        s1 = self.segments[0].schur(self.q1)
        if s1 is None or not np.isfinite(s1).all():
            return
        self.rho_star = max(lambda_max(s1, "rho* (first segment's Schur block)"), 0.0)
        self.ok = True

    def check(self, rho: float) -> bool:
        """Is the first segment provably positive definite at ``rho`` (then ``M > 0``)?"""
        if not self.ok or not (math.isfinite(rho) and rho >= 0):
            return False
        seg = self.segments[0]
        q0 = np.diag(np.full(seg.offs[1], float(rho)))
        return certify_pd(seg.assemble(q0, self.q1), seg.radius(q0, self.q1),
                          overwrite=True)


def verify_chain_chordal(lmi: ChainLMI, params, rho: float) -> bool:
    """The clique-wise §8 check of ``M(rho, params) > 0`` (params already projected)."""
    return ChordalCertificate(lmi, params).check(rho)


def _pivot_margin(s: np.ndarray) -> np.ndarray:
    diag = np.abs(np.diag(s))
    base = np.maximum(diag, 2.0**-20 * float(diag.max(initial=0.0)))
    return np.where(base > 0, base, 2.0**-1000)


class ForwardChordal:
    """The same clique split, with the ``Q_k`` chosen *forward* from ``Q_0 = rho I``: each
    clique's top block is the forward pivot ``X_{k-1}`` of §2 (ECLipsE's recursion, §2b),
    which is what sequential multipliers (ldlt-fast) keep well conditioned. ``rho`` enters
    every ``Q_k``, so :meth:`check` runs the whole sweep, certifying each clique."""

    def __init__(self, lmi: ChainLMI, params, cliques=None):
        self.cliques = cliques or chain_cliques(lmi, params)
        self._pieces = [_Segment([c]) for c in self.cliques]
        self._delta = [FIRST_MARGIN] * len(self.cliques)  # last margin that certified

    def _sweep(self, rho: float, certify: bool, stop: int | None = None) -> bool:
        """The forward sweep; with ``stop``, it ends before clique ``stop`` and keeps the
        splitting matrix entering it in ``self.head``."""
        n0 = self.cliques[0].a.shape[0]
        q_prev = np.diag(np.full(n0, float(rho)))
        for k, clq in enumerate(self.cliques):
            if k == stop:
                self.head = q_prev
                return True
            last = k == len(self.cliques) - 1
            top = clq.a + q_prev
            top = (top + top.T) / 2.0
            try:
                chol = scipy.linalg.cho_factor(top, lower=True, check_finite=False)
            except (scipy.linalg.LinAlgError, ValueError):
                return False
            # the bottom block left after eliminating the top: c - b^T top^-1 b (- Q_k)
            s = clq.c - clq.b.T @ scipy.linalg.cho_solve(chol, clq.b, check_finite=False)
            s = (s + s.T) / 2.0
            if not np.isfinite(s).all():
                return False
            if last:
                q_next = None
            else:  # Q_k = s - margin: Z_k's Schur complement onto the bottom is the margin
                base = _pivot_margin(s)
                delta = self._delta[k] if certify else 0.0
                q_next = s - np.diag(delta * base)
            if certify:
                piece = self._pieces[k]
                while not certify_pd(piece.assemble(q_prev, q_next),
                                     piece.radius(q_prev, q_next), overwrite=True):
                    if last:
                        return False
                    delta *= 8.0
                    if delta > LAST_MARGIN:
                        return False
                    q_next = s - np.diag(delta * base)
                if not last:
                    self._delta[k] = delta
            elif last:
                try:
                    scipy.linalg.cholesky(s, lower=True, check_finite=False)
                except (scipy.linalg.LinAlgError, ValueError):
                    return False
            q_prev = q_next
        return True

    def output_bounds(self, rho: float, w_out: np.ndarray, r_out, rows: np.ndarray,
                      margins=(1e-9, 1e-6, 1e-3)) -> np.ndarray:
        """Certified l2 bounds on ``Lip(c_p^T W_out x_{L-1})`` for every row ``c_p`` of
        ``rows``, all from one forward sweep [derived; §3, §8 "Chordal form"].

        The cliques must come from the chain *without* its output term (``w_out`` of zero
        rows). Every clique but the last is certified once at ``rho``; the last one is the
        same for every row except its output term. With ``P`` the forward pivot left in the
        last block and ``g_p = W_out^T c_p``, the LMI ``rho E_0 + sum t F - sigma_p g_p g_p^T``
        is positive definite for ``sigma_p < 1 / (g_p^T P^-1 g_p)``; it is proven per row by
        Rump's test on the last clique, with the output term's rounding in the radius
        (``r_out``: the weights' own radius, or None). Scaling by ``1 / sigma_p`` turns it into
        the row's LipSDP certificate with ``rho / sigma_p``, multipliers ``t / sigma_p``
        (§1.2; multipliers are a cone), so ``Lip <= sqrt(rho / sigma_p)``. inf where no
        margin passes.
        """
        from ..numerics import round_up

        out = np.full(len(rows), math.inf)
        if not (math.isfinite(rho) and rho > 0 and self._sweep(rho, True, len(self.cliques) - 1)):
            return out
        q_prev, clq, piece = self.head, self.cliques[-1], self._pieces[-1]
        top = clq.a + q_prev
        try:
            chol = scipy.linalg.cho_factor((top + top.T) / 2.0, lower=True, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return out
        pivot = clq.c - clq.b.T @ scipy.linalg.cho_solve(chol, clq.b, check_finite=False)
        try:
            pchol = scipy.linalg.cho_factor((pivot + pivot.T) / 2.0, lower=True,
                                            check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return out
        z, z_rad = piece.assemble(q_prev, None), piece.radius(q_prev, None)
        n = clq.c.shape[0]
        w_abs = np.abs(w_out) + (0 if r_out is None else r_out)
        inner = max(piece.inner, w_out.shape[0])
        for p, c in enumerate(np.asarray(rows, dtype=np.float64)):
            g = w_out.T @ c
            h = w_abs.T @ np.abs(c)
            need = float(g @ scipy.linalg.cho_solve(pchol, g, check_finite=False))
            if not (math.isfinite(need) and need > 0):
                continue
            for eta in margins:
                sigma = 1.0 / (need * (1.0 + eta))
                zp = z.copy()
                zp[-n:, -n:] -= sigma * np.outer(g, g)
                rad = z_rad.copy()
                extra = gamma(2 * inner + 8) * 1.01 * np.outer(h, h)
                if r_out is not None:  # the exact W_out is within r_out of the stored one
                    e = np.outer(np.asarray(r_out).T @ np.abs(c), h)
                    extra = extra + e + e.T
                rad[-n:, -n:] += sigma * extra * (1.0 + 1e-12)
                if certify_pd(zp, rad, overwrite=True):
                    out[p] = round_up(math.sqrt(round_up(rho / sigma)))
                    break
        return out

    def feasible(self, rho: float) -> bool:
        """Float forward sweep, no certificate: do all forward pivots stay positive?"""
        return self._sweep(rho, certify=False)

    def check(self, rho: float) -> bool:
        """Is ``M(rho, T) > 0`` provably (every clique certified)?"""
        if not (math.isfinite(rho) and rho >= 0):
            return False
        return self._sweep(rho, certify=True)

    def rho_estimate(self, guess: float | None = None, iters: int = 60) -> float:
        """The smallest rho whose float forward sweep succeeds (log-bisection), inf if none."""
        if guess is not None and math.isfinite(guess) and guess > 0:
            if self.feasible(guess * (1.0 + 1e-10)):  # the backward rho* is accurate
                return guess * (1.0 + 1e-10)
            hi = guess
        else:
            hi = 1.0
        for _ in range(200):
            if self.feasible(hi):
                break
            hi *= 4.0
            if not math.isfinite(hi):
                return math.inf
        else:
            return math.inf
        lo = hi / 4.0
        for _ in range(200):
            if not self.feasible(lo):
                break
            hi, lo = lo, lo / 4.0
            if lo < 1e-300:
                return hi
        for _ in range(iters):
            mid = math.sqrt(lo * hi)
            if self.feasible(mid):
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-10 * hi:
                break
        return hi
