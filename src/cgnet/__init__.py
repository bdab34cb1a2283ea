"""cgnet: the Context Guided Network (CGNet) for semantic segmentation, in PyTorch.

The public API: the model (`CGNet`), checkpoints (`load_model`, `save_checkpoint`, `make_meta`),
preprocessing (`make_spec`, `to_tensor`), inference on any backend (`make_predictor`) and the
model's cost (`count_params`, `count_flops`, `count_activation_bytes`).
"""
from importlib.metadata import PackageNotFoundError, version

from .checkpoint import CheckpointError, load_checkpoint, load_model, make_meta, save_checkpoint
from .common import CGNetError
from .complexity import count_activation_bytes, count_flops, count_params
from .deploy.predictor import make_predictor
from .model import CGNet
from .preprocess import make_spec, to_tensor

try:
    __version__ = version("cgnet")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["CGNet", "CGNetError", "CheckpointError", "load_model", "load_checkpoint", "save_checkpoint",
           "make_meta", "make_spec", "to_tensor", "make_predictor", "count_params", "count_flops",
           "count_activation_bytes", "__version__"]
