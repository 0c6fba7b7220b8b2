"""``knet.load``: one loader for every kind of weights knet reads.

    import knet
    model = knet.load("knet_s3_fcn_r50-d8_....pth")              # the preset that fits is found
    model = knet.load("knet_s3_upernet_swin-t_....pth", "knet-swin-t-upernet")   # shapes shared: name it
    model = knet.load("my_model/")                                # native directory: config inside
    runner = knet.load("my_model.onnx")                           # a `knet export` file: ONNX Runtime

Sources: a reference or official ``.pth`` (mmsegmentation's semantic, mmdetection's panoptic and
instance checkpoints), a knet training checkpoint, a native directory (``model.safetensors`` +
``config.json``, as :func:`knet.save_pretrained` writes it) and an ``.onnx`` file written by
``knet export``. The command line's ``--checkpoint`` goes through it too.

This module imports neither torch nor the checkpoint package until a torch source is loaded: an
``.onnx`` file runs with ONNX Runtime and numpy alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import KnetError

PathLike = Union[str, "os.PathLike[str]"]
ONNX_SUFFIX = ".onnx"


def is_onnx_file(source: Optional[PathLike]) -> bool:
    """Whether ``source`` names an ONNX file (by its suffix), which :func:`load` runs in ONNX Runtime."""
    return source is not None and Path(os.fspath(source)).suffix.lower() == ONNX_SUFFIX


def load(source: PathLike, model: Optional[str] = None, *, device: Any = None,
         overrides: Optional[Dict[str, Any]] = None, threads: Optional[int] = None, strict: bool = True) -> Any:
    """A model ready to run, from any weights knet reads.

    Args:
        source: a reference ``.pth``, a knet training checkpoint, a native directory, or an
            ``.onnx`` file written by ``knet export``.
        model: the preset's name. Left out, the config comes from the file (a native directory, a
            training checkpoint, an ONNX file), else from the one preset whose shapes fit it; when
            several fit, the error names them. For a file that carries its config, a name of
            another preset is an error naming the file's.
        device: where the model runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. Left
            out, a torch model stays on the CPU (where you pass it tensors) and an ONNX file runs
            where ONNX Runtime chooses (``auto``; its runner takes and gives host arrays either way).
        overrides: config overrides (dotted keys) applied to the preset or the carried config;
            an ONNX file's config is fixed when it is exported, so none apply.
        threads: ONNX Runtime's CPU threads for an ``.onnx`` file (torch models follow
            ``torch.set_num_threads``).
        strict: every key and shape of the file must fit the model (``False`` loads what fits).

    Returns:
        a torch model (:class:`knet.KNet` or :class:`knet.KNetMaskSegmentor`) in eval mode on
        ``device``, or for an ``.onnx`` file an :class:`~knet.inference.onnx_runner.OnnxRunner`.
        Both run through :class:`knet.Segmenter` and :func:`knet.evaluate`.

    To load weights into a model you already have, use :func:`knet.load_checkpoint`.
    """
    if model is not None and not isinstance(model, str):
        raise KnetError(f"model must be a preset name, got {type(model).__name__}; to load weights into a model "
                        "you have, use knet.load_checkpoint(model, path)")
    if is_onnx_file(source):
        return _load_onnx(source, model, device, overrides, threads)
    from ..checkpoint import load_model
    from ..utils.device import resolve_device

    module = load_model(source, model, overrides or None, strict=strict)
    if device is not None:
        module = module.to(resolve_device(str(device)))
    return module.eval()


def _load_onnx(path: PathLike, model: Optional[str], device: Any, overrides: Optional[Dict[str, Any]],
               threads: Optional[int]) -> Any:
    from .onnx_runner import OnnxRunner

    if overrides:
        raise KnetError(f"{os.fspath(path)} is an ONNX file: its config and weights are fixed when it is exported, "
                        "so overrides do not apply",
                        cli=f"--set does not apply to an .onnx --checkpoint ({os.fspath(path)}): its config and "
                            "weights are fixed when it is exported")
    runner = OnnxRunner(path, device=str(device) if device is not None else "auto", threads=threads)
    if model is not None and model != runner.config.name:
        message = f"{os.fspath(path)} holds {runner.config.name}, not {model}"
        raise KnetError(f"{message}; leave the model name out (the file carries its config)",
                        cli=f"{message}; leave --model out (the file carries its config)")
    return runner


__all__ = ["load", "is_onnx_file", "ONNX_SUFFIX"]
