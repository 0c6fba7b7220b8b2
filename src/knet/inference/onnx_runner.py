"""An ONNX Runtime backend for the test pipelines: a model exported by ``knet export``.

    runner = OnnxRunner("knet-r50-fcn.onnx")          # config read from the file's metadata
    logits = runner(x)                                # (N, C, H, W), numpy for numpy, torch for torch

:class:`OnnxRunner` has the model-runner interface of :class:`knet.inference.pipeline.TorchRunner`
(``config``, ``device``, ``__call__(x, mode, crop_size, stride)``), so the exported file runs
through the same pipelines: ``knet predict``, ``knet test`` and ``knet benchmark`` with an
``.onnx`` ``--checkpoint``, ``knet.load("FILE.onnx")`` and ``knet.Segmenter``. It takes and gives
numpy arrays (``takes_numpy``: the semantic test pipeline then runs in numpy) or torch tensors
(float32, on the CPU).

This module imports no torch: a semantic model deploys with onnxruntime, numpy, OpenCV and Pillow
(``knet.Segmenter.from_pretrained("FILE.onnx")``, ``knet predict --checkpoint FILE.onnx``); torch is
imported only when a torch tensor is passed in.

The file (see :mod:`knet.export.onnx`) has one input, ``images`` (N, 3, H, W) normalised float32,
and per task the outputs of the runner interface: ``logits`` (N, C, H, W) for semantic models;
``cls_logits`` (N, K, C) and ``mask_logits`` (N, K, H/4, W/4) for panoptic and instance models.
Sliding-window inference of a semantic model runs every window batch through the same file.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import ModelConfig, config_from_dict
from ..errors import KnetError
from ..tasks import get_task
from ..utils.float_modes import calling_thread_float_environment
from ..utils.windows import sliding_windows

PathLike = Union[str, "os.PathLike[str]"]

# metadata_props keys of an exported file.
CONFIG_KEY = "knet.config"  # config.to_json(), task, class names, palette, normalisation included
VERSION_KEY = "knet.version"  # the knet that wrote it
WINOGRAD_KEY = "knet.winograd"  # how many 3x3 convolutions the export wrote as Winograd (matrix products)
TARGET_KEY = "knet.target"  # the runtime the file was laid out for (knet.export.targets); absent in older files
PRECISION_KEY = "knet.precision"  # fp16 for a file of `knet export --precision fp16`; absent for float32
INPUT_NAME = "images"

INSTALL_HINT = 'pip install "knet-seg[onnx]"'


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line KnetError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise KnetError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def _providers(ort: Any, device: str) -> List[Any]:
    """ONNX Runtime execution providers for a ``--device`` value (auto: CUDA when this ONNX
    Runtime has it, else the CPU)."""
    name = (device or "auto").strip().lower()
    available = ort.get_available_providers()
    if name == "auto":
        name = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name == "cuda" or name.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise KnetError(f"device {device!r}: this ONNX Runtime has no CUDA provider (install onnxruntime-gpu, "
                            "or use --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise KnetError(f"device {device!r} is not available to ONNX Runtime; valid: auto, cpu, cuda, cuda:N")


def read_config(metadata: Dict[str, str], source: str) -> ModelConfig:
    """The knet config stored in an exported file's ``metadata_props``."""
    text = metadata.get(CONFIG_KEY)
    if text is None:
        raise KnetError(f"{source}: no knet config in its metadata (not written by `knet export`); "
                        "export the model with `knet export --format onnx`")
    try:
        return config_from_dict(json.loads(text))
    except (ValueError, KnetError) as err:
        raise KnetError(f"{source}: its knet config cannot be read ({err})") from None


def _length_delimited_fields(data: Any, wanted: Sequence[int]) -> Any:
    """(field number, bytes) of each length-delimited field numbered in ``wanted`` of the protobuf
    message read from the binary stream ``data``. Every other field is skipped by seeking, so
    walking a model file's top level reads a few bytes, not its graph."""
    def varint() -> Optional[int]:
        value, shift = 0, 0
        while True:
            byte = data.read(1)
            if not byte:
                return None
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7

    while (tag := varint()) is not None:
        field, kind = tag >> 3, tag & 7
        if kind == 0:
            varint()
        elif kind in (1, 5):  # fixed 64 and 32 bits
            data.seek(8 if kind == 1 else 4, os.SEEK_CUR)
        elif kind == 2:
            length = varint() or 0
            if field in wanted:
                yield field, data.read(length)
            else:
                data.seek(length, os.SEEK_CUR)
        else:  # not a message this function can walk
            return


def _stored_precision(path: Path) -> str:
    """The ``knet.precision`` of an ONNX file's metadata (``fp32`` when absent or unreadable), read
    from the file's top-level fields without parsing its graph and without the onnx package:
    ModelProto's ``metadata_props`` is field 14, each a StringStringEntryProto (key 1, value 2)."""
    try:
        with open(path, "rb") as data:
            for _, entry in _length_delimited_fields(data, (14,)):
                values = dict(_length_delimited_fields(io.BytesIO(entry), (1, 2)))
                if values.get(1) == PRECISION_KEY.encode():
                    return values.get(2, b"fp32").decode()
    except (OSError, UnicodeDecodeError):  # unreadable: ONNX Runtime's own error says why, right after
        pass
    return "fp32"


class OnnxRunner:
    """The model-runner interface over a file written by ``knet export --format onnx``.

    Args:
        path: the ``.onnx`` file.
        device: ``auto`` (ONNX Runtime's CUDA provider when it has one, else the CPU), ``cpu``,
            ``cuda`` or ``cuda:N``. Inputs and outputs are CPU arrays either way.
        threads: intra-op threads of the CPU provider (default: the number of CPUs).

    ``config`` is the exported model's config (from the file's metadata); calling the runner on
    normalised float32 images (N, 3, h, w) gives a semantic model's logits (N, C, h, w), whole or
    sliding-window, or a panoptic/instance model's ``(cls_logits (N, K, C), mask_logits (N, K,
    h/4, w/4))`` (h, w multiples of 32), each float32: numpy arrays for a numpy input, CPU torch
    tensors for a torch one. ``task`` is the model's :class:`~knet.tasks.Task`: it names the
    file's outputs (``onnx_outputs``) and says whether it runs in sliding windows (``dense_logits``).
    """

    takes_numpy = True  # the pipelines may hand it numpy arrays (no torch needed)
    device = "cpu"  # where the pipelines put its inputs

    def __init__(self, path: PathLike, device: str = "auto", threads: Optional[int] = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise KnetError(f"{self.path}: no such file (expected an .onnx file written by `knet export`)")
        if threads is not None and threads < 1:
            raise KnetError(f"threads must be at least 1, got {threads}")
        self.threads = int(threads) if threads is not None else (os.cpu_count() or 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers
        # Denormal floats as zero, as knet's torch path: products of them are up to a hundred times slower.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        providers = _providers(ort, device)
        if providers == ["CPUExecutionProvider"] and _stored_precision(self.path) == "fp16":
            # ONNX Runtime's CPU graph optimiser crashes the process on float16 graphs; unoptimised they run.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            with calling_thread_float_environment():  # the session sets flush-to-zero on this thread too
                self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # ONNX Runtime raises its own exception types for unreadable files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise KnetError(f"{self.path}: ONNX Runtime cannot load it ({first})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.config: ModelConfig = read_config(metadata, str(self.path))
        self.target: Optional[str] = metadata.get(TARGET_KEY)  # None for a file written before targets
        self.precision: str = metadata.get(PRECISION_KEY, "fp32")
        self.task = get_task(self.config.task)
        self.output_names: Tuple[str, ...] = self.task.onnx_outputs
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(self.output_names):
            raise KnetError(f"{self.path}: expected input {INPUT_NAME} and outputs {', '.join(self.output_names)} "
                            f"for a {self.config.task} model, found {', '.join(inputs)} -> {', '.join(outputs)}")
        self.providers: List[str] = self.session.get_providers()

    def __repr__(self) -> str:
        return f"OnnxRunner({self.path}, {self.config.name}, {self.providers[0]})"

    def run(self, x: Any) -> List[Any]:
        """One session run: (N, 3, h, w) -> the file's outputs, float32 numpy arrays for a numpy
        input, CPU torch tensors for a torch tensor."""
        if isinstance(x, np.ndarray):
            return self.session.run(list(self.output_names), {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        import torch

        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return [torch.from_numpy(out) for out in self.session.run(list(self.output_names), {INPUT_NAME: array})]

    def __call__(self, x: Any, mode: str = "whole", crop_size: Optional[Sequence[int]] = None,
                 stride: Optional[Sequence[int]] = None) -> Any:
        if mode not in ("whole", "slide"):
            raise KnetError(f"inference mode {mode!r} is not one of: whole, slide")
        if mode == "whole":
            outputs = self.run(x)
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        if not self.task.dense_logits:
            raise KnetError(f"inference mode {mode!r}: {self.config.task} models run on whole images")
        crop = tuple(crop_size or self.config.data.crop_size[::-1])
        step = tuple(stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3)))
        if isinstance(x, np.ndarray):
            return self.slide(x, crop, step)
        import torch

        return torch.from_numpy(self.slide(x.detach().to("cpu", torch.float32).numpy(), crop, step))

    def slide(self, x: np.ndarray, crop_size: Tuple[int, int], stride: Tuple[int, int],
              crops_per_batch: int = 8) -> np.ndarray:
        """Sliding-window logits (N, C, H, W) of a semantic model, as ``KNet.slide_inference``:
        windows (h, w) every stride (h, w), the last ones flush with the bottom/right border, run
        ``crops_per_batch`` windows (each over the whole batch) per session run, and averaged."""
        batch, _, height, width = x.shape
        boxes = sliding_windows(height, width, crop_size, stride)
        num_classes = self.config.num_classes
        logits = np.zeros((batch, num_classes, height, width), np.float32)
        counts = np.zeros((1, 1, height, width), np.float32)
        for start in range(0, len(boxes), crops_per_batch):
            chunk = boxes[start:start + crops_per_batch]
            crops = np.concatenate([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            out = self.run(crops)[0].reshape(len(chunk), batch, num_classes, *crops.shape[2:])
            for (y1, y2, x1, x2), crop_logits in zip(chunk, out):
                logits[:, :, y1:y2, x1:x2] += crop_logits
                counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts


__all__ = ["CONFIG_KEY", "VERSION_KEY", "WINOGRAD_KEY", "TARGET_KEY", "PRECISION_KEY", "INPUT_NAME", "OnnxRunner",
           "import_onnxruntime", "read_config"]
