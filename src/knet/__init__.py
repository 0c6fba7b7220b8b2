"""knet: K-Net semantic, panoptic and instance segmentation in PyTorch.

    import knet
    model = knet.load("file.pth")                 # any weights: .pth, native directory, .onnx
    logits = model(x)                             # (N,3,H,W) normalised -> (N,150,H,W), eval mode
    model = knet.build_model("knet-r50-fcn")      # any preset name, optional overrides
    knet.load_checkpoint(model, "file.pth")       # into a model you have
"""
__version__ = "1.0.0"

from typing import TYPE_CHECKING  # noqa: E402

from .config import KNetConfig, KNetMaskConfig  # noqa: E402
from .presets import get_config, list_presets  # noqa: E402

if TYPE_CHECKING:
    # What type checkers and IDEs see of the lazy names below (tests/test_package.py keeps both in step).
    from .checkpoint import load_checkpoint, save_pretrained
    from .engine.evaluation import evaluate
    from .inference.loading import load
    from .inference.segmenter import Segmenter
    from .models.mask_segmentor import KNetMaskSegmentor
    from .models.segmentor import KNet, build_model

# The heavy parts (torch models, data, engine) load on first use so that importing knet,
# `knet --version` and `knet --help` stay fast: name -> (module, attribute).
_LAZY = {
    "build_model": ("knet.models.segmentor", "build_model"),
    "KNet": ("knet.models.segmentor", "KNet"),
    "KNetMaskSegmentor": ("knet.models.mask_segmentor", "KNetMaskSegmentor"),
    "load_checkpoint": ("knet.checkpoint", "load_checkpoint"),
    "load": ("knet.inference.loading", "load"),
    "save_pretrained": ("knet.checkpoint", "save_pretrained"),
    "evaluate": ("knet.engine.evaluation", "evaluate"),
    "Segmenter": ("knet.inference.segmenter", "Segmenter"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'knet' has no attribute {name!r}")


def __dir__():
    return list(__all__)


__all__ = [
    "__version__", "KNetConfig", "KNetMaskConfig", "get_config", "list_presets", "build_model", "KNet",
    "KNetMaskSegmentor", "load", "load_checkpoint", "save_pretrained", "evaluate", "Segmenter",
]
