"""``lipsdp-spectral``: LipSDP with channel multipliers on a stride-1 conv chain, solved and
certified frequency by frequency (:mod:`lipverify.lmi.spectral` has the derivation).

The dense LMI of a 16-layer, 32-channel conv chain on 14x14 inputs has order 100,548; here
each of the 225 frequencies of a 15x15 torus has an LMI of order 513, coupled only through the
rank-10 output term. The bound is never below ``lipsdp-channel``'s on the same network
(the torus relaxes the zero padding), and usually well below the naive product.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> from lipverify.ir.linear import Conv2d
>>> k = np.zeros((1, 1, 3, 3)); k[0, 0, 1, 1] = 2.0
>>> net = Network.sequential([Conv2d(k, (1, 4, 4), pads=(1, 1, 1, 1)), np.eye(16)],
...                          [SlopeRestricted.named("relu")], input_shape=(1, 4, 4))
>>> out = lipsdp_spectral(net)
>>> out.certified, round(out.bound, 6)   # ReLU after a doubling: exactly 2
(True, 2.0)
"""

from __future__ import annotations

import math

from ..certify.spectral import certify_spectral
from ..certify.spectral import seconds as check_seconds
from ..errors import NotApplicableError
from ..ir.network import Network
from ..lmi.spectral import SpectralLMI
from ..options import TimeOptions
from ..results import MethodOutput
from ..runtime.clock import Clock
from ..solvers.spectral import dual_bound, minimize
from ..status import GAP_TOLERANCE, Outcome, Status
from . import register_method
from .baselines import naive
from .pipeline import output

#: Checks the certificate's margin search usually needs (for the time reserve).
CERTIFICATE_CHECKS = 3
#: Rank of the dual candidate from the final multipliers' trajectories.
DUAL_RANK = 16


def certificate_seconds(lmi: SpectralLMI) -> float:
    return CERTIFICATE_CHECKS * check_seconds(lmi)


def _dual(lmi: SpectralLMI, t, info: dict, clock: Clock) -> float | None:
    """The best lower bound on the formulation's optimum (rho units): the dual start's
    trajectory ascent, and where the solve converged with time left the final trajectories'
    small SDP (tight there). A measurement: a failure only loses the gap."""
    lows = [info.get("dual")]
    if not info["timed_out"] and not clock.expired():
        scaled, factors, out = lmi.balanced()
        try:
            low = dual_bound(scaled, t / factors, DUAL_RANK)
            lows.append(None if low is None else low * out)
        except (ArithmeticError, ValueError, RuntimeError):
            pass
    lows = [v for v in lows if v is not None and v > 0]
    return max(lows) if lows else None


@register_method(
    "lipsdp-spectral",
    summary="LipSDP with channel multipliers on stride-1 conv chains, one small LMI per "
    "DFT frequency of a torus (§7 [derived]); certified, with a measured gap.",
    options=TimeOptions,
)
def lipsdp_spectral(network: Network, *, norm: str = "l2", time_limit: float | None = None,
                    **_) -> MethodOutput:
    """Minimise rho* (L-BFGS on the soft maximum, :mod:`lipverify.solvers.spectral`), certify
    the multipliers (§8, :mod:`lipverify.certify.spectral`), measure the gap from a dual
    point; never above the certified naive bound."""
    if norm != "l2":
        raise NotApplicableError("lipsdp-spectral supports the l2 norm only")
    clock = Clock(time_limit)
    lmi = SpectralLMI.from_network(network)
    reserve = certificate_seconds(lmi)
    t, rho_star, info = minimize(lmi, time_limit=clock.left(reserve))
    cert = certify_spectral(lmi, t, rho_star, clock.deadline)
    rho = cert.rho
    dual = _dual(lmi, t, info, clock) if cert.ok else None
    gap = 1.0 - math.sqrt(dual / rho) if dual is not None else None  # of L, as Status says
    details = {"order": network.input_dim + sum(n.width for n in network.nodes),
               "frequency_order": lmi.order, "frequencies": lmi.frequencies,
               "torus": list(lmi.torus), "multipliers": "channel",
               "evaluations": info["evaluations"], "timed_out": info["timed_out"],
               "start": info["start"],
               "seconds_total": clock.elapsed(),
               "dual_bound": math.sqrt(dual) if dual is not None and dual > 0 else None}
    if cert.ok:
        outcome = Outcome.OPTIMAL if gap is not None and gap <= GAP_TOLERANCE \
            else Outcome.CONVERGED
        status = Status(outcome, "per-frequency LipSDP (channel multipliers), L-BFGS",
                        timed_out=info["timed_out"]).with_gap(
            gap, None if gap is not None else "no dual-feasible point from the trajectories")
    else:
        status = Status(Outcome.NOT_CERTIFIED, cert.message, timed_out=info["timed_out"])
    result = output(cert, status, solver="spectral",
                    solver_value=math.sqrt(rho_star) if rho_star > 0 else None,
                    details=details, kind="lipsdp-spectral")
    floor = naive(network, norm="l2")
    if floor.certified and not result.bound <= floor.bound:
        why = (f"the per-frequency bound {result.bound:.6g} is above the naive product"
               if cert.ok else f"not certified ({cert.message})")
        return MethodOutput(bound=floor.bound, certified=True,
                            status=floor.status.with_(fallback_from="lipsdp-spectral",
                                                      note=f"naive instead: {why}"),
                            solver=None, solver_value=None,
                            details={**details, "fallback": "naive"})
    return result


