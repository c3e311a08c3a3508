"""lipverify: certified upper bounds on the Lipschitz constant of neural networks.

>>> import lipverify
>>> "lipsdp-neuron" in {m.name for m in lipverify.list_methods()}
True
"""

from .api import bound, compare, lipverify_version
from .certify.files import check_certificate, save_certificate
from .errors import (
    AmbiguousLayoutError,
    LipverifyError,
    ModelLoadError,
    NotApplicableError,
    SolverError,
    UnsupportedModelError,
    UntrustedPickleError,
    UsageError,
)
from .importers import load
from .ir.activations import GroupSort, Householder, Lipschitz, MaxPool2d, SlopeRestricted
from .ir.network import Network, Provenance
from .methods import get_method, list_methods
from .regions import Ball, Box, read_vnnlib
from .results import BoundResult
from .robustness import certified_robustness, margin_bounds

__version__ = lipverify_version()

__all__ = [
    "AmbiguousLayoutError",
    "Ball",
    "Box",
    "BoundResult",
    "GroupSort",
    "Householder",
    "Lipschitz",
    "LipverifyError",
    "MaxPool2d",
    "ModelLoadError",
    "Network",
    "NotApplicableError",
    "Provenance",
    "SlopeRestricted",
    "SolverError",
    "UnsupportedModelError",
    "UntrustedPickleError",
    "UsageError",
    "certified_robustness",
    "margin_bounds",
    "bound",
    "check_certificate",
    "compare",
    "get_method",
    "list_methods",
    "load",
    "read_vnnlib",
    "save_certificate",
    "__version__",
]
