"""Model creation (timm, torchvision ``tv:``, Hugging Face ``hf:``), weights and preprocessing."""

from . import transreid  # noqa: F401  (registers transreid_ssl_* with timm)
from .factory import create_model, num_parameters
from .hub import OFFLINE_ROUTE, PretrainedWeightsUnavailable, tv_weights
from .loading import load_checkpoint, load_state
from .preprocess import preprocessing
from .weights import head_prefixes, read_checkpoint

__all__ = [
    "OFFLINE_ROUTE",
    "PretrainedWeightsUnavailable",
    "create_model",
    "head_prefixes",
    "load_checkpoint",
    "load_state",
    "num_parameters",
    "preprocessing",
    "read_checkpoint",
    "tv_weights",
]
