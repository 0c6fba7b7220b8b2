"""Options shared by the command-line verbs, each declared once.

Metavars: ``N`` for integers, ``X`` for other numbers, ``N|W,H`` / ``W,H`` for sizes, a word for
anything else (``PATH``, ``DIR``, ``FILE``, ``NAME``, ``KEY=VALUE``).
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Tuple

from ..errors import KnetError
from ..utils.device import DEVICE_HELP
from ..utils.precision import PRECISION_HELP, PRECISIONS

# The options declared here: every verb that has one has it with the same help, default, metavar
# and choices (tests/apps/test_options.py walks the parsers).
SHARED_OPTIONS = ("--model", "--checkpoint", "--set", "--device", "--threads", "--quiet", "--compile",
                  "--precision", "--low-memory", "--tta", "--crop-size", "--stride", "--test-scale")
# The verbs that run a model, and the options each of them has.
MODEL_VERBS = ("predict", "test", "benchmark", "serve", "train", "demo")
RUNTIME_OPTIONS = ("--device", "--threads", "--quiet")


def size_pair(text: str) -> Tuple[int, int]:
    """``"512"`` -> (512, 512); ``"2048,512"`` or ``"2048x512"`` -> (2048, 512) (width, height)."""
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or W,H with positive integers, got {text!r}")
    return values[0], values[1]


def add_model(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", required=required, default=None, metavar="NAME",
                        help="preset name (see `knet models`); with --checkpoint, may be left out when the file "
                             "carries its config (a native directory, a knet training checkpoint, an .onnx file) "
                             "or only one preset's shapes fit it")


def add_weights(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint PATH``: every kind of weights, read by :func:`knet.load`."""
    parser.add_argument("--checkpoint", required=required, default=None, metavar="PATH",
                        help="the weights: a reference .pth (mmsegmentation, mmdetection), a knet training "
                             "checkpoint, a native directory (model.safetensors + config.json) or an .onnx file "
                             "written by `knet export` (runs in ONNX Runtime)")


def checkpoint_is_onnx(args: argparse.Namespace) -> bool:
    """Whether ``--checkpoint`` is an ``.onnx`` file (the verb then runs ONNX Runtime, not torch)."""
    from ..inference.loading import is_onnx_file

    return is_onnx_file(getattr(args, "checkpoint", None))


def load_weights(args: argparse.Namespace, device: Optional[Any] = None) -> Any:
    """The model of ``--checkpoint`` (with ``--model``, ``--set``, ``--threads`` when the verb has
    them) through :func:`knet.load`: a torch model on ``device`` (default ``--device``, else the
    CPU), or the ONNX Runtime runner of an ``.onnx`` file."""
    from ..config import parse_set_options
    from ..inference.loading import load

    return load(args.checkpoint, getattr(args, "model", None),
                device=device if device is not None else getattr(args, "device", None),
                overrides=parse_set_options(getattr(args, "overrides", None) or []) or None,
                threads=getattr(args, "threads", None))


def set_torch_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(--threads)`` when given, unless ``--checkpoint`` is an ``.onnx`` file
    (ONNX Runtime takes them itself, and runs without torch)."""
    if getattr(args, "threads", None) is not None and not checkpoint_is_onnx(args):
        import torch

        torch.set_num_threads(args.threads)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch, or for ONNX Runtime with an .onnx --checkpoint "
                             "(default: the runtime's own choice)")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config fields, e.g. --set train.lr=1e-3 data.test_scale=2048,640")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar or progress lines: print the results, warnings and errors only")


def add_test_pipeline(parser: argparse.ArgumentParser) -> None:
    """The options of the test pipeline (``knet test``, ``knet predict``)."""
    parser.add_argument("--tta", action="store_true",
                        help="multi-scale (0.5-1.75) + flip, the protocol of the results table's ms+flip column")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole-image (the reference's setting for K-Net) or sliding-window inference")
    parser.add_argument("--crop-size", type=size_pair, default=None, metavar="N|W,H",
                        help="slide mode: window size (default: the config's crop, 512 or 640)")
    parser.add_argument("--stride", type=size_pair, default=None, metavar="N|W,H",
                        help="slide mode: window step (default: two thirds of the crop, 341 for 512)")
    parser.add_argument("--test-scale", type=size_pair, default=None, metavar="W,H",
                        help="keep-ratio resize to fit this size (default: the config's, 2048,512 or 2048,640)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images per forward (images of equal size are batched together; the result of 1 "
                             "up to float rounding)")


def add_low_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--low-memory", action="store_true",
                        help="train with less memory for more time: backbone stages and a UPerNet head's stride-4 maps "
                             "are recomputed in the backward pass, and on the CPU large freed buffers go back to "
                             "the system (at 512x512: ~0.6-0.7x the peak memory, ~20-40%% more time)")


def add_no_winograd(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-winograd", dest="winograd", action="store_false",
                        help="on the CPU, train the wide 3x3 convolutions with the direct convolution instead of "
                             "Winograd F(4x4,3x3) (the trained model holds plain convolutions either way)")


def add_channels_last(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="on the CPU, train in the channels-last (N, H, W, C) layout (default: under --amp bf16, "
                             "where oneDNN's bf16 convolutions need it, and where the config's "
                             "train.cpu_channels_last says so: the ResNet panoptic/instance presets); the trained "
                             "model is contiguous either way")


def add_compile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="run the torch model through torch.compile: each new input size compiles once "
                             "(tens of seconds), then runs faster; for long runs")


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)


def refuse_torch_options_for_onnx(args: argparse.Namespace) -> None:
    """``--compile`` and ``--precision`` apply to torch models: refused for an ``.onnx`` ``--checkpoint``."""
    if not checkpoint_is_onnx(args):
        return
    if getattr(args, "compile", False):
        raise KnetError("--compile applies to torch models, not to an .onnx --checkpoint")
    if getattr(args, "precision", "fp32") != "fp32":
        raise KnetError(f"--precision {args.precision} applies to torch models; an .onnx --checkpoint keeps the "
                        "precision it was exported in (knet export --precision)")


def check_positive(name: str, value, minimum: int = 1) -> None:
    """A one-line error for ``--name`` values below ``minimum``."""
    if value is not None and value < minimum:
        raise KnetError(f"--{name} must be at least {minimum}, got {value}")


def inference_allocator(args: argparse.Namespace):
    """The allocator setting of a verb that runs models (``allocator_setting`` of its module)."""
    from ..utils.memory import INFERENCE

    return INFERENCE


def training_allocator(args: argparse.Namespace):
    """The allocator setting of a verb that trains: ``--low-memory`` gives large freed buffers back."""
    from ..utils.memory import LOW_MEMORY_TRAINING, TRAINING

    return LOW_MEMORY_TRAINING if getattr(args, "low_memory", False) else TRAINING
