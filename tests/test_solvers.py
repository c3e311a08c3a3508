"""Solver registry conformance: every solver keeps the contract of lipverify.solvers.base.

Each usable solver solves the same small LipSDP problems (a ReLU chain, a GroupSort chain, a
residual DAG where it takes them); its multipliers must certify (§8) within a small factor of
the optimum found by the interior point. A solver that is not usable here must say why.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import lipverify
from lipverify.certify.gate import certify_chain
from lipverify.errors import UsageError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.lmi.chain import ChainLMI
from lipverify.lmi.dag import DagLMI, certify_dag
from lipverify.solvers import SOLVERS, Solver, SolveResult, get_solver

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_residual import resnet  # noqa: E402

RELU = SlopeRestricted.named("relu")


def _chain(act=RELU):
    rng = np.random.default_rng(4)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(6, 6)), rng.normal(size=(2, 6))]
    return ChainLMI.from_network(lipverify.Network.sequential(ws, [act, act]))


@pytest.fixture(scope="module")
def optimum():
    """sqrt(rho) at the optimum, from the interior point (gap ~1e-9)."""
    return SOLVERS["ipm"].solve(_chain()).value


def _certified(lmi, params) -> float:
    if isinstance(lmi, DagLMI):
        return certify_dag(lmi, params)[0]
    cert = certify_chain(lmi, params)
    return cert.bound if cert.ok else math.inf


@pytest.mark.parametrize("name", list(SOLVERS))
def test_contract(name):
    s = get_solver(name)
    assert isinstance(s, Solver) and s.name == name and s.summary
    ok, why = s.availability()
    assert isinstance(ok, bool) and why
    assert s.structured == (s.cvxpy_solver is None)
    assert s.max_cone > 0 and s.capabilities.lmi_kinds


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solves_a_relu_chain_to_a_certified_near_optimal_bound(name, optimum):
    s = SOLVERS[name]
    if not s.availability()[0]:
        pytest.skip(f"{name}: {s.availability()[1]}")
    lmi = _chain()
    res = s.solve(lmi, time_limit=60)
    assert isinstance(res, SolveResult) and res.solver == name and res.seconds >= 0
    assert res.params is not None, res.status
    bound = _certified(lmi, res.params)
    assert optimum * (1 - 1e-6) <= bound <= optimum * 1.02, (bound, optimum)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_declared_capabilities_are_honoured(name):
    """A GroupSort chain and a residual DAG: solved when declared, refused with a reason
    otherwise (the ipm takes slope QCs only, lowrank slope-QC chains only)."""
    s = SOLVERS[name]
    if not s.availability()[0]:
        pytest.skip(f"{name}: {s.availability()[1]}")
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0]
    gs = ChainLMI.from_network(lipverify.Network.sequential([q, q.T, q], [GroupSort(2)] * 2))
    dag = DagLMI.from_network(resnet([(np.eye(6) * 0.5, np.eye(6) * 0.5)] * 2,
                                     np.random.default_rng(1), m=6))
    for lmi in (gs, dag):
        why = s.takes(lmi)
        if why is not None:
            assert (name == "ipm" and ("groupsort" in why or "slope" in why)) or \
                (name == "lowrank" and ("groupsort" in why or "dag" in why)), (name, why)
            continue
        res = s.solve(lmi, time_limit=60)
        assert res.params is not None, (name, res.status)
        bound = _certified(lmi, res.params)
        assert math.isfinite(bound) and bound >= 1.0 - 1e-9


def test_unknown_solver_lists_the_registry():
    with pytest.raises(UsageError, match="unknown solver 'cplex'; choose one of: auto, mosek"):
        get_solver("cplex")


def test_cvxopt_is_selectable_by_name():
    if not SOLVERS["cvxopt"].availability()[0]:
        pytest.skip("cvxopt not installed")
    net = lipverify.Network.sequential([np.eye(3), 2 * np.eye(3)], [RELU])
    r = lipverify.bound(net, method="lipsdp-neuron", solver="cvxopt")
    assert r.certified and r.solver == "cvxopt" and r.bound == pytest.approx(2.0, rel=1e-6)
