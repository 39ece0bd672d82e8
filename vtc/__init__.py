"""vtc: plug-in visual-token compression for multimodal LLMs on Hugging Face transformers.

    import vtc
    model = vtc.compress(model, vtc.VTCConfig(...), processor=processor)
    vtc.last_stats(model)
    with vtc.disabled(model): ...    # the uncompressed model, in this thread (a distillation teacher)
    vtc.unpatch(model)
"""

from . import rvtc, training
from .api import compress, disabled, get_config, is_compressed, last_stats, unpatch
from .checkpoint import mark_only_vtc_trainable
from .config import LVTCConfig, PruneConfig, PVTCConfig, RVTCConfig, VTCConfig
from .errors import (
    ConfigError,
    DataError,
    InputError,
    PlaceholderMismatchError,
    UnsupportedModelError,
    UnsupportedVersionError,
    UntestedVersionWarning,
    VTCError,
)
from .evaluate import EvalResult, evaluate
from .pretrained import load_pretrained, save_pretrained
from .pvtc import PVTCProjector
from .registry import register_adapter, supported_models
from .training import load_trained
from .version import __version__ as __version__  # re-exported

__all__ = [
    "ConfigError",
    "DataError",
    "EvalResult",
    "InputError",
    "LVTCConfig",
    "PVTCConfig",
    "PVTCProjector",
    "PlaceholderMismatchError",
    "PruneConfig",
    "RVTCConfig",
    "UnsupportedModelError",
    "UnsupportedVersionError",
    "UntestedVersionWarning",
    "VTCConfig",
    "VTCError",
    "compress",
    "disabled",
    "evaluate",
    "get_config",
    "is_compressed",
    "last_stats",
    "load_pretrained",
    "load_trained",
    "mark_only_vtc_trainable",
    "register_adapter",
    "rvtc",
    "save_pretrained",
    "supported_models",
    "training",
    "unpatch",
]
