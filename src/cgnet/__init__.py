"""cgnet: the Context Guided Network (CGNet) for semantic segmentation, in PyTorch."""
from importlib.metadata import PackageNotFoundError, version

from .checkpoint import CheckpointError, load_checkpoint, load_model, make_meta, save_checkpoint
from .model import CGNet
from .preprocess import make_spec, to_tensor
from .complexity import count_activation_bytes, count_flops, count_params

try:
    __version__ = version("cgnet")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["CGNet", "CheckpointError", "load_model", "load_checkpoint", "save_checkpoint", "make_meta",
           "make_spec", "to_tensor", "count_params", "count_flops", "count_activation_bytes",
           "__version__"]
