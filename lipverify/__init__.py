"""lipverify: certified upper bounds on the Lipschitz constant of neural networks.

>>> import lipverify
>>> sorted(m.name for m in lipverify.list_methods())[:3]
['gershgorin', 'lower', 'naive']
"""

from .activations import GroupSort, Householder, Lipschitz, MaxPool2d, SlopeRestricted
from .api import bound, compare, lipverify_version
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
from .methods import get_method, list_methods
from .network import Network, Provenance
from .results import BoundResult

__version__ = lipverify_version()

__all__ = [
    "AmbiguousLayoutError", "BoundResult", "GroupSort", "Householder", "Lipschitz",
    "LipverifyError", "MaxPool2d", "ModelLoadError", "Network", "NotApplicableError",
    "Provenance", "SlopeRestricted", "SolverError", "UnsupportedModelError",
    "UntrustedPickleError", "UsageError", "bound", "compare", "get_method", "list_methods",
    "load", "__version__",
]
