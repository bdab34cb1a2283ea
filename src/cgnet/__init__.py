"""cgnet: the Context Guided Network (CGNet) for semantic segmentation, in PyTorch.

The public API: the model (`CGNet`), checkpoints (`load_model`, `save_checkpoint`, `make_meta`),
preprocessing (`make_spec`, `to_tensor`), inference on any backend (`make_predictor`) and the
model's cost (`count_params`, `count_flops`, `count_activation_bytes`), and the Hugging Face Hub's
model folders (`save_pretrained`, `from_pretrained`, `push_to_hub`; `pip install cgnet[hub]`).
"""
from importlib.metadata import PackageNotFoundError, version

from .checkpoint import CheckpointError, load_checkpoint, load_model, make_meta, save_checkpoint
from .common import CGNetError
from .complexity import count_activation_bytes, count_flops, count_params
from .deploy.predictor import make_predictor
from .hub import from_pretrained, push_to_hub, save_pretrained
from .model import CGNet
from .preprocess import make_spec, to_tensor

try:
    __version__ = version("cgnet")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["CGNet", "CGNetError", "CheckpointError", "load_model", "load_checkpoint", "save_checkpoint",
           "make_meta", "make_spec", "to_tensor", "make_predictor", "count_params", "count_flops",
           "count_activation_bytes", "save_pretrained", "from_pretrained", "push_to_hub", "__version__"]

# `model.save_pretrained(DIR)` and `model.push_to_hub(REPO)`, as timm's and
# segmentation_models_pytorch's models have them (the functions live in cgnet.hub)
CGNet.save_pretrained = save_pretrained
CGNet.push_to_hub = push_to_hub
