"""One home for the numerical primitives every module shares.

* **Extreme eigenvalues** of symmetric matrices (:func:`eigh_range`, :func:`lambda_max`,
  :func:`lambda_min`, :func:`eigh_top`, :func:`eigvalsh_batched`). LAPACK drivers can fail
  on perfectly good input: scipy 1.17's ``evr`` raises ``LinAlgError: Internal Error`` on
  a repeated top eigenvalue. So each call first scales the matrix by an exact power of two
  (eigenvalues scale exactly; weights of 1e150 or 1e-150 neither overflow nor underflow),
  then tries the drivers in turn: ``evr`` (the MRRR subset driver), ``evd`` (divide and
  conquer, whole spectrum), ``ev`` (implicit QL), and last Lanczos (``eigsh``) or LOBPCG,
  whose answer is accepted only after a residual check. When all fail, the caller gets a
  :class:`~lipverify.errors.NumericalError` (a ``SolverError``, exit code 5) that says
  what failed; never a raw ``LinAlgError``.
* **Rounding** of §8: :data:`UNIT_ROUNDOFF`, :func:`gamma`, :func:`round_up`,
  :func:`round_down`.
* **The machine**: :func:`physical_memory`, :func:`cpu_count`, :func:`blas_threads`.

None of these decide anything about soundness: eigenvalues here are estimates, and every
certified number still passes the Cholesky test of §8 (:mod:`lipverify.certify.rump`).

>>> import numpy as np
>>> a = np.diag([3.0, 3.0, 3.0, 1.0])           # repeated top eigenvalue
>>> lambda_max(a), lambda_min(a)
(3.0, 1.0)
>>> round_up(1.0) > 1.0 > round_down(1.0)
True
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings

import numpy as np
import scipy.linalg

from .errors import NumericalError

log = logging.getLogger(__name__)

#: ``u = 2^-53``, the unit roundoff of IEEE binary64 (§8).
UNIT_ROUNDOFF = 2.0**-53

#: An eigenpair from the last-resort iterative solvers is accepted when its residual
#: ``||A v - lambda v||`` is at most this times ``||A||_F`` (the dense drivers reach ~1e-15).
RESIDUAL_TOL = 1e-8

#: Drivers tried in turn (scipy names): MRRR subset, divide and conquer, implicit QL.
DRIVERS = ("evr", "evd", "ev")


# ------------------------------------------------------------------------------ failures
#: Exceptions that mean "the arithmetic broke", whatever library raised them.
NUMERIC_FAILURES: tuple[type[BaseException], ...] = (
    np.linalg.LinAlgError, FloatingPointError, OverflowError, ZeroDivisionError,
)


def as_numerical_error(exc: BaseException, what: str) -> NumericalError | None:
    """``exc`` as a :class:`~lipverify.errors.NumericalError` saying where it happened, or
    None when it is not a numerical failure (a bug, which must stay visible as one).

    >>> as_numerical_error(np.linalg.LinAlgError("Internal Error."), "lipsdp-neuron")
    NumericalError('lipsdp-neuron: numerical failure (LinAlgError: Internal Error.)')
    >>> as_numerical_error(KeyError("x"), "naive") is None
    True
    """
    if isinstance(exc, NumericalError):
        return exc
    text = str(exc)
    numeric = isinstance(exc, NUMERIC_FAILURES) or "LinAlgError" in type(exc).__name__ or (
        isinstance(exc, ValueError)
        and ("infs or nans" in text.lower() or "must be finite" in text.lower())
    )
    if not numeric:
        return None
    return NumericalError(f"{what}: numerical failure ({type(exc).__name__}: {text})")


# ----------------------------------------------------------------------------- rounding
def gamma(k: int) -> float:
    """``gamma_k = k u / (1 - k u)`` of FORMULATIONS.md §8 (Higham's constant).

    >>> 0 < gamma(10) < 1.2e-15
    True
    """
    ku = k * UNIT_ROUNDOFF
    return ku / (1.0 - ku)


def round_up(x: float) -> float:
    """The next float64 above ``x`` (one outward rounding step, §8)."""
    return float(np.nextafter(x, np.inf))


def round_down(x: float) -> float:
    """The next float64 below ``x``."""
    return float(np.nextafter(x, -np.inf))


# ---------------------------------------------------------------------------- the machine
#: Absolute error allowed for one computed twiddle ``cos``/``sin`` of :func:`twiddles`. The
#: phase is an exact integer ``m`` reduced to ``|m| <= L/2``, so ``fl(2 pi m / L)`` is off by
#: at most ``gamma_3 pi < 10u``; ``math.cos``/``math.sin`` (the C library's) are assumed
#: within 4 ulp (<= 8u on ``[-1, 1]``; glibc documents <= 1 ulp). 32u leaves a margin.
TWIDDLE_ERROR = 32.0 * UNIT_ROUNDOFF


def twiddles(length: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of ``2 pi m / length`` for ``m = 0..length-1``, the phase reduced to
    ``|angle| <= pi``; each within :data:`TWIDDLE_ERROR` (DFTs with a rigorous radius, §7)."""
    m = np.arange(length, dtype=np.int64)
    m = np.where(2 * m > length, m - length, m)
    angles = [2.0 * math.pi * float(k) / length for k in m.tolist()]
    return (np.array([math.cos(t) for t in angles], dtype=np.float64),
            np.array([math.sin(t) for t in angles], dtype=np.float64))


def physical_memory() -> int:
    """Bytes of physical memory (16 GiB when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def blas_threads(limit: int | None = 1):
    """Context manager capping BLAS threads (``None``: leave them as they are).

    Small matrices gain nothing from threads, and threaded BLAS collapses when cores are
    shared (measured: 46 s against 3 s on a 2-core machine).
    """
    if limit is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


# ------------------------------------------------------------------------- eigenvalues
def _as_float(a) -> np.ndarray:
    """float64, or complex128 for a Hermitian (complex) input."""
    return np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)


def _symmetric(a, what: str) -> np.ndarray:
    a = _as_float(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise NumericalError(f"{what}: expected a square matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise NumericalError(
            f"{what}: the matrix has NaN or Inf entries (an overflow or a NaN upstream); "
            "no eigenvalue can be computed"
        )
    return a


def power_of_two_scale(a: np.ndarray) -> float:
    """An exact power of two ``s`` with ``max |a / s|`` in [0.5, 1) (1.0 for a zero matrix;
    at most 2^1023, so entries of 2^1023 and above give [1, 2) instead of overflowing).

    >>> power_of_two_scale(np.array([3.0])), power_of_two_scale(np.array([1e308]))
    (4.0, 8.98846567431158e+307)
    """
    top = float(np.max(np.abs(a))) if a.size else 0.0
    if top == 0.0:
        return 1.0
    return math.ldexp(1.0, min(math.frexp(top)[1], 1023))


def _residual_ok(a: np.ndarray, w: np.ndarray, v: np.ndarray) -> bool:
    if not (np.isfinite(w).all() and np.isfinite(v).all()):
        return False
    norm = max(float(np.linalg.norm(a)), np.finfo(float).tiny)
    res = np.linalg.norm(a @ v - v * w, axis=0)
    return bool((res <= RESIDUAL_TOL * norm * max(1, a.shape[0]) ** 0.5).all())


def _iterative(a: np.ndarray, lo: int, hi: int):
    """Lanczos (or LOBPCG) for a range touching one end of the spectrum; None if unusable."""
    import scipy.sparse.linalg as sla

    n = a.shape[0]
    k = hi - lo + 1
    if lo != 0 and hi != n - 1:
        return None
    which = "LA" if hi == n - 1 else "SA"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LOBPCG's "too small, using a dense solver" notice
            if k < n - 1:
                w, v = sla.eigsh(a, k=k, which=which, tol=0.0, maxiter=max(1000, 20 * n))
            else:
                x = np.random.default_rng(0).standard_normal((n, k))
                w, v = sla.lobpcg(a, x, largest=which == "LA", tol=1e-12, maxiter=max(200, n))
    except (np.linalg.LinAlgError, ValueError, ArithmeticError, RuntimeError) as exc:
        log.debug("iterative eigensolver failed: %s", exc)
        return None
    order = np.argsort(w)
    w, v = np.asarray(w)[order], np.asarray(v)[:, order]
    return (w, v) if _residual_ok(a, w, v) else None


def eigh_range(
    a, lo: int, hi: int, *, vectors: bool = False, what: str = "matrix"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues ``lo..hi`` (ascending, 0-based, inclusive) of symmetric (or Hermitian) ``a``.

    Returns ``(w, v)`` with ``v`` the eigenvectors as columns when ``vectors`` (else None).
    Only the lower triangle is read, as LAPACK does (the last-resort iterative solvers get the
    matrix symmetrised from it). Raises
    :class:`~lipverify.errors.NumericalError` when every driver fails or ``a`` is not finite.

    >>> import numpy as np
    >>> w, v = eigh_range(np.diag([2.0, 5.0, 5.0]), 1, 2, vectors=True)
    >>> w.tolist(), v.shape
    ([5.0, 5.0], (3, 2))
    """
    a = _symmetric(a, what)
    n = a.shape[0]
    if not 0 <= lo <= hi < n:
        raise NumericalError(f"{what}: eigenvalue range {lo}..{hi} outside 0..{n - 1}")
    scale = power_of_two_scale(a)
    a_s = a / scale  # exact: a power of two (entries below 2^-1022 * scale may lose bits)
    errors = []
    for driver in DRIVERS:
        try:
            if driver == "evr":
                out = scipy.linalg.eigh(a_s, eigvals_only=not vectors, subset_by_index=[lo, hi],
                                        driver=driver, check_finite=False)
            else:
                out = scipy.linalg.eigh(a_s, eigvals_only=not vectors, driver=driver,
                                        check_finite=False)
        except (np.linalg.LinAlgError, ValueError) as exc:
            errors.append(f"{driver}: {exc}")
            log.debug("%s: LAPACK driver %s failed (%s); trying the next", what, driver, exc)
            continue
        w, v = (out, None) if not vectors else out
        if driver != "evr":
            w = w[lo:hi + 1]
            v = None if v is None else v[:, lo:hi + 1]
        if np.isfinite(w).all():
            return w * scale, v
        errors.append(f"{driver}: non-finite eigenvalues")
    # LAPACK reads the lower triangle only; the iterative solvers read the whole matrix
    found = _iterative(np.tril(a_s) + np.tril(a_s, -1).conj().T, lo, hi)
    if found is not None:
        w, v = found
        return w * scale, (v if vectors else None)
    errors.append("Lanczos/LOBPCG: no eigenpair passed the residual check")
    raise NumericalError(
        f"{what}: every symmetric eigensolver failed on a matrix of order {n} "
        f"({'; '.join(errors)})"
    )


#: Above this order ``lambda_max(..., iterative=True)`` uses Lanczos instead of LAPACK.
ITERATIVE_MIN_ORDER = 512


def lambda_max(a, what: str = "matrix", *, iterative: bool = False) -> float:
    """Largest eigenvalue of symmetric ``a`` (robust; see :func:`eigh_range`).

    With ``iterative`` and order above :data:`ITERATIVE_MIN_ORDER`: Lanczos (``eigsh``, one
    eigenvalue, ``tol=1e-10``), the dense path if it does not converge. That value is for
    choosing or ranking only (a scale, a start), never a certificate: it is not checked
    like the dense drivers' answer, and whoever takes the choice evaluates it again.
    """
    n = np.shape(a)[0]
    if iterative and n > ITERATIVE_MIN_ORDER:
        import scipy.sparse.linalg as sla

        try:
            return float(sla.eigsh(a, k=1, which="LA", tol=1e-10,
                                   return_eigenvectors=False)[0])
        except sla.ArpackNoConvergence:
            pass
    return float(eigh_range(a, n - 1, n - 1, what=what)[0][-1])


def lambda_min(a, what: str = "matrix") -> float:
    """Smallest eigenvalue of symmetric ``a`` (robust; see :func:`eigh_range`)."""
    return float(eigh_range(a, 0, 0, what=what)[0][0])


def eigh_top(a, k: int, what: str = "matrix") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of symmetric ``a``, ascending: ``(w, V)``."""
    n = np.shape(a)[0]
    k = max(1, min(k, n))
    w, v = eigh_range(a, n - k, n - 1, vectors=True, what=what)
    return w, v


def eigh_all(a, what: str = "matrix") -> tuple[np.ndarray, np.ndarray]:
    """Every eigenpair of symmetric ``a``, ascending: ``(w, V)``."""
    return eigh_top(a, np.shape(a)[0], what=what)


def eigvalsh_all(a, what: str = "matrix") -> np.ndarray:
    """Every eigenvalue of symmetric ``a``, ascending."""
    n = np.shape(a)[0]
    return eigh_range(a, 0, n - 1, what=what)[0]


def eigvalsh_batched(stack, what: str = "matrices") -> np.ndarray:
    """All eigenvalues (ascending, per matrix) of a stack ``(..., n, n)`` of symmetric (or
    Hermitian) matrices: one batched LAPACK call, and matrix by matrix through :func:`eigh_range`
    only if the batched call fails."""
    stack = _as_float(stack)
    if not np.isfinite(stack).all():
        raise NumericalError(f"{what}: NaN or Inf entries; no eigenvalue can be computed")
    try:
        w = np.linalg.eigvalsh(stack)
        if np.isfinite(w).all():
            return w
    except np.linalg.LinAlgError as exc:
        log.debug("%s: batched eigvalsh failed (%s); one matrix at a time", what, exc)
    n = stack.shape[-1]
    flat = stack.reshape(-1, n, n)
    out = np.stack([eigh_range(m, 0, n - 1, what=what)[0] for m in flat])
    return out.reshape(stack.shape[:-1])


def spectral_norm(w, what: str = "matrix") -> float:
    """``||w||_2`` (an estimate, not a certificate: see :mod:`lipverify.certify.rump`), from the
    largest eigenvalue of the smaller Gram matrix of ``w`` scaled by a power of two, so
    weights of 1e200 do not overflow in the Gram product.

    >>> spectral_norm(np.array([[3.0, 0.0], [0.0, -4.0]]))
    4.0
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.size == 0:
        return 0.0
    if not np.isfinite(w).all():
        raise NumericalError(f"{what}: NaN or Inf entries; no norm can be computed")
    scale = power_of_two_scale(w)
    ws = w / scale
    small = ws @ ws.T if ws.shape[0] <= ws.shape[1] else ws.T @ ws
    return math.sqrt(max(lambda_max(small, what), 0.0)) * scale


def row_basis(f, what: str = "matrix") -> np.ndarray:
    """Orthonormal basis (columns) of the row space of ``f``: SVD, or the eigenvectors of
    ``f^T f`` when LAPACK's SVD does not converge."""
    f = np.asarray(f, dtype=np.float64)
    if f.shape[0] == 0:
        return np.zeros((f.shape[1], 0))
    try:
        _, s, vt = np.linalg.svd(f, full_matrices=False)
    except np.linalg.LinAlgError as exc:
        log.debug("%s: SVD failed (%s); using the Gram eigenvectors", what, exc)
        w, v = eigh_all(f.T @ f, what)
        s, vt = np.sqrt(np.maximum(w[::-1], 0.0)), v[:, ::-1].T
    tol = max(f.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
    return vt[s > tol].T
