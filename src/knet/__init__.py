"""knet: K-Net semantic, panoptic and instance segmentation in PyTorch.

    import knet
    model = knet.build_model("knet-r50-fcn")      # any preset name, optional overrides
    knet.load_checkpoint(model, "file.pth")       # reference .pth or a native directory
    model.eval(); logits = model(x)               # (N,3,H,W) normalised -> (N,150,H,W)
"""
__version__ = "1.0.0"

from .config import KNetConfig, KNetMaskConfig  # noqa: E402
from .presets import get_config, list_presets  # noqa: E402


def __getattr__(name):
    # The heavy parts (torch models, data, engine) load on first use so that importing knet,
    # `knet --version` and `knet --help` stay fast.
    lazy = {
        "build_model": ("knet.models.segmentor", "build_model"),
        "KNet": ("knet.models.segmentor", "KNet"),
        "load_checkpoint": ("knet.checkpoint", "load_checkpoint"),
        "from_pretrained": ("knet.checkpoint", "from_pretrained"),
        "save_pretrained": ("knet.checkpoint", "save_pretrained"),
        "evaluate": ("knet.engine.evaluation", "evaluate"),
        "Segmenter": ("knet.inference.segmenter", "Segmenter"),
    }
    if name in lazy:
        import importlib

        module_name, attr = lazy[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'knet' has no attribute {name!r}")


__all__ = [
    "__version__", "KNetConfig", "KNetMaskConfig", "get_config", "list_presets", "build_model", "KNet",
    "load_checkpoint", "from_pretrained", "save_pretrained", "evaluate", "Segmenter",
]
