"""The LMI contract (FORMULATIONS.md §1, §5): what the solvers, the certificate gate and the
dual bound call, for every kind. Kinds: ``"chain"`` (:class:`~lipverify.lmi.chain.ChainLMI`,
§1-§3), ``"dag"`` (:class:`~lipverify.lmi.dag.DagLMI`, §5a) and ``"linf-row"``
(:class:`~lipverify.lmi.linf.LinfRowLMI`, §1.4). A new kind is one subclass in one file;
``tests/test_lmi_contract.py`` runs the conformance suite over every kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import ClassVar

import numpy as np

from ..qc import QC


class LMI(ABC):
    """The LMI contract (FORMULATIONS.md §1, §5): what solvers, certificates and the dual bound
    call, for every kind. ``kind`` is ``"chain"`` (:class:`ChainLMI`, §1-§3) or ``"dag"``
    (:class:`~lipverify.lmi.dag.DagLMI`, §5a); callers branch on it, never on the class.
    Bookkeeping shared by every kind: one QC per activation node, parameters concatenated.
    """

    kind: ClassVar[str] = ""
    qcs: tuple[QC, ...]
    sizes: list[int] | tuple[int, ...]

    @abstractmethod
    def assemble(self, params, rho: float, absolute: bool = False) -> np.ndarray:
        """The dense matrix ``M(rho, params)`` (``absolute``: of absolute values)."""

    @abstractmethod
    def rho_star(self, params) -> float:
        """The smallest rho with ``M(rho, params) >= 0``; inf when none."""

    @abstractmethod
    def anchor(self) -> np.ndarray:
        """Strictly feasible multipliers (§8 step 4)."""

    @cached_property
    def anchor_rho(self) -> float:
        """``rho*`` at :meth:`anchor` (the scale of rho for certificate margins), computed
        once per LMI."""
        return self.rho_star(self.anchor())

    @abstractmethod
    def soft_rho(self, params, mu: float):
        """``(rho*, F_mu, grad F_mu)`` of the smoothed maximum eigenvalue (§2)."""

    @abstractmethod
    def node_inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(columns, V)``: the coordinates of ``M`` that feed activation node ``k`` (1-based)
        and the pre-activation map restricted to them."""

    @property
    def order(self) -> int:
        return sum(self.sizes)

    @property
    def param_sizes(self) -> list[int]:
        return [qc.num_params() for qc in self.qcs]

    def split(self, params) -> list[np.ndarray]:
        return np.split(np.asarray(params, dtype=np.float64), np.cumsum(self.param_sizes)[:-1])

    def project(self, params) -> np.ndarray:
        """Exact projection onto the multiplier set (§8 step 3)."""
        return np.concatenate([qc.project(p) for qc, p in zip(self.qcs, self.split(params))])
