"""int8 static quantization of an exported knet model (``knet export --quantize int8``).

    knet export --checkpoint my_model --out model-int8.onnx --quantize int8 --calibration photos/

ONNX Runtime's static quantization in the QDQ format: convolution and matrix-product weights int8
per output channel, their input activations uint8 with ranges calibrated (min/max) on the inputs
that knet's own test pipeline feeds the model for a folder of images. Everything else (the kernel
updates' layer norms, softmaxes, the final resize) stays float32. The file keeps the float model's
metadata (knet's config) and adds ``knet.quantization``, so ``OnnxRunner``, ``knet.load`` and
``knet predict`` / ``knet test`` with it as ``--checkpoint`` run it like the float file. Which
convolutions are int8 is the export target's choice (:mod:`knet.export.targets`, stored as
``knet.target``), never the exporting machine's: the Winograd convolutions of the float file stay
float32.

The accuracy against float32 is measured on the calibration images right after quantizing: the
outputs' mean and max |int8 - fp32| relative to max |fp32|, and for semantic models the share of
pixels whose argmax class is unchanged (at the model's input resolution). A held-out evaluation is
``knet test --checkpoint FILE.onnx`` on both files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.io import IMAGE_SUFFIXES, read_image
from ..errors import KnetError
from ..inference.onnx_runner import (CONFIG_KEY, INPUT_NAME, INSTALL_HINT, TARGET_KEY, VERSION_KEY, WINOGRAD_KEY,
                                     OnnxRunner)
from ..utils.atomic import atomic_path
from .targets import DEFAULT_TARGET, get_target

PathLike = Union[str, "os.PathLike[str]"]
logger = logging.getLogger(__name__)

QUANTIZATION_KEY = "knet.quantization"
SCHEMES = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 16
# The nodes quantized: convolutions, and matrix products by a weight (linear layers). They are
# nearly all of the work (see `knet benchmark`'s MAC count). Products of two activations (the
# kernels times the feature map that gives the mask logits, attention) stay float: one uint8 range
# per tensor cannot hold their spread (quantizing them left 0.02% of a tiny model's argmax classes
# unchanged, against 86% without); neither are normalisations and softmaxes quantized.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
QUANTIZED_SCOPES = ("model.backbone", "model.neck", "model.decode_head.kernel_generate_head")
EXCLUDED_SCOPES = ("model.decode_head.kernel_generate_head.conv_seg",)
# The nodes of Winograd convolutions (the transform convolutions and the products in the
# transformed domain) stay float32 too: Winograd's transformed values span a wider range than 8
# bits keep well.
WINOGRAD_NAMESPACE = "knet.models.winograd.WinogradConv2d"


@dataclass
class QuantizationResult:
    """What :func:`quantize_int8` wrote and how far its outputs are from the float model's on the
    calibration images."""

    path: Path
    size_mb: float
    calibration_images: int
    mean_relative_error: Dict[str, float]  # per output: mean |int8 - fp32| / max |fp32|
    max_relative_error: Dict[str, float]  # per output: max |int8 - fp32| / max |fp32|
    pixel_agreement: Optional[float]  # semantic models: share of pixels with the fp32 argmax class
    target: str = DEFAULT_TARGET  # the export target stored in the file (knet.export.targets)

    def summary(self) -> str:
        parts = [f"{name}: mean {self.mean_relative_error[name]:.2e}, max {self.max_relative_error[name]:.2e}"
                 for name in self.mean_relative_error]
        text = (f"int8 against fp32 on the {self.calibration_images} calibration images, |difference| / max |fp32| "
                f"({'; '.join(parts)})")
        if self.pixel_agreement is not None:
            text += f"; argmax class unchanged at {100 * self.pixel_agreement:.2f}% of pixels"
        return text


def calibration_files(folder: PathLike, limit: int = DEFAULT_CALIBRATION_IMAGES) -> List[Path]:
    """Up to ``limit`` image files under ``folder`` (recursively, sorted by path, spread evenly
    over the sorted list when there are more)."""
    root = Path(folder)
    if not root.is_dir():
        raise KnetError(f"--calibration {root}: not a folder of images")
    if limit < 1:
        raise KnetError(f"the number of calibration images must be at least 1, got {limit}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise KnetError(f"--calibration {root}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(files) > limit:
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in picks]
    return files


class _RecordingRunner:
    """A model runner that runs the float file and keeps every input the pipeline gives it: the
    calibration data are exactly the model inputs of knet's test pipeline."""

    def __init__(self, runner: OnnxRunner) -> None:
        self.runner = runner
        self.config = runner.config
        self.device = runner.device
        self.inputs: List[np.ndarray] = []
        self.outputs: List[List[np.ndarray]] = []

    def __call__(self, x: Any, mode: str = "whole", crop_size: Any = None, stride: Any = None) -> Any:
        out = self.runner.run(x)
        self.inputs.append(np.ascontiguousarray(x.detach().cpu().numpy()))
        self.outputs.append([t.numpy() for t in out])
        return tuple(out) if len(out) > 1 else out[0]


class _InputReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over recorded inputs."""

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self._iterator: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._iterator, None)
        return None if batch is None else {INPUT_NAME: batch}


def _quantization_module() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise KnetError(f"int8 quantization needs ONNX Runtime: {INSTALL_HINT}") from None
    return quantization


class _OnnxRuntimeNotes(logging.Filter):
    """Moves ONNX Runtime's quantization notes (logged on the root logger, e.g. "Please consider to
    run pre-processing before quantization") to knet's logger at debug level; errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or "onnxruntime" not in Path(record.pathname).parts:
            return True
        logger.debug("onnxruntime: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's quantization notes are for its developers, not knet's users: scoped to knet's
    own call, they go to ``logging.getLogger("knet")`` at debug level and its Python warnings are
    ignored; the root logger is left as it was."""
    root = logging.getLogger()
    notes = _OnnxRuntimeNotes()
    # without a handler on the root logger, logging.warning() would install one (basicConfig) for good
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(notes)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"onnxruntime(\..*)?$")
            yield
    finally:
        root.removeFilter(notes)
        if placeholder is not None:
            root.removeHandler(placeholder)


def quantize_int8(fp32_path: PathLike, out_path: PathLike, images: Sequence[np.ndarray], *,
                  test_scale: Optional[Tuple[int, int]] = None, per_channel: bool = True,
                  reduce_range: bool = False, scopes: Sequence[str] = QUANTIZED_SCOPES,
                  threads: Optional[int] = None, target: Optional[str] = None) -> QuantizationResult:
    """Quantize a file written by :func:`knet.export.onnx.export_onnx` to int8 (QDQ).

    Args:
        fp32_path: the float32 ``.onnx`` file (knet's metadata inside); its Winograd convolutions,
            if any, stay float32.
        out_path: the int8 file, written atomically.
        images: calibration images, uint8 (H, W, 3) RGB; each is run through the task's test
            pipeline (keep-ratio resize to ``test_scale``, default the config's; normalisation;
            padding for panoptic/instance models) and the model inputs it gives are the calibration
            data.
        per_channel: one weight scale per output channel (more accurate than one per tensor).
        reduce_range: 7-bit weights, for CPUs without VNNI whose uint8 x int8 products can
            saturate (AVX2); off by default.
        scopes: the modules whose convolutions and linear layers are quantized.
        threads: ONNX Runtime's threads for the calibration and comparison runs.
        target: the export target stored in the int8 file (``knet.target``; validated); None (the
            default) keeps the float file's, ``cpu`` for a file without one. The layout is the
            float file's either way (``export_onnx(..., target="cpu-vnni", winograd=False)`` is the
            source of a ``cpu-vnni`` int8 file, as ``knet export --quantize int8`` writes it).
    """
    import onnx

    from ..tasks import get_task

    quantization = _quantization_module()
    if not images:
        raise KnetError("int8 quantization needs at least one calibration image")
    if target is not None:
        get_target(target)
    source = onnx.load(str(fp32_path))
    source_metadata = {p.key: p.value for p in source.metadata_props}
    winograd = int(source_metadata.get(WINOGRAD_KEY, "0"))
    target = get_target(target or source_metadata.get(TARGET_KEY) or DEFAULT_TARGET).name
    recorder = _RecordingRunner(OnnxRunner(fp32_path, device="cpu", threads=threads))
    config = recorder.config
    task = get_task(config.task)
    pipeline = task.pipeline(recorder, test_scale=test_scale)
    for image in images:  # one at a time: each input its own calibration sample
        pipeline.predict([image])

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        nodes = weight_nodes(source, scopes)
        with _quiet_onnxruntime():
            quantization.quantize_static(
                str(fp32_path), str(tmp), _InputReader(recorder.inputs), quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes, per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax)
        model = onnx.load(str(tmp))
        metadata = dict(source_metadata, **{TARGET_KEY: target})
        metadata[QUANTIZATION_KEY] = (f"int8 static QDQ (onnxruntime {_ort_version()}): {len(nodes)} convolutions "
                                      "and matrix products by weights; "
                                      f"weights int8 {'per channel' if per_channel else 'per tensor'}"
                                      f"{', reduced range' if reduce_range else ''}; activations uint8 min/max "
                                      f"over {len(images)} images"
                                      + (f"; {winograd} Winograd 3x3 convolutions float32" if winograd else ""))
        del model.metadata_props[:]
        for key in (CONFIG_KEY, VERSION_KEY, TARGET_KEY, QUANTIZATION_KEY):
            if key in metadata:
                entry = model.metadata_props.add()
                entry.key, entry.value = key, metadata[key]
        onnx.save(model, str(tmp))
        size_mb = tmp.stat().st_size / 2**20
        quantized = OnnxRunner(tmp, device="cpu", threads=recorder.runner.threads)
        result = _compare(recorder, quantized, task.dense_logits)
    return QuantizationResult(out_path, size_mb, len(images), *result, target=target)


def _namespace(node: Any) -> str:
    """The module path the exporter recorded for a node (``.../model.backbone.layer1.0.conv1``)."""
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


def weight_nodes(model: Any, scopes: Sequence[str] = QUANTIZED_SCOPES) -> List[str]:
    """The names of the nodes to quantize in an exported model: in the modules under ``scopes``,
    every ``Conv``, and every ``MatMul`` / ``Gemm`` whose second input is a stored weight (an
    initializer or a constant), except those of Winograd convolutions."""
    constants = {t.name for t in model.graph.initializer}
    constants.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
    names = []
    for node in model.graph.node:
        modules = re.findall(r"model\.[\w.]+", _namespace(node))
        if not any(m == scope or m.startswith(scope + ".") for m in modules for scope in scopes):
            continue
        if any(m == excluded or m.startswith(excluded + ".") for m in modules for excluded in EXCLUDED_SCOPES):
            continue
        if WINOGRAD_NAMESPACE in _namespace(node):
            continue
        if node.op_type == "Conv" or (node.op_type in ("MatMul", "Gemm") and node.input[1] in constants):
            if not node.name:
                raise KnetError(f"cannot quantize: a {node.op_type} node of the graph has no name")
            names.append(node.name)
    return names


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _compare(recorder: _RecordingRunner, quantized: OnnxRunner,
             dense_logits: bool) -> Tuple[Dict[str, float], Dict[str, float], Optional[float]]:
    """int8 against the recorded fp32 outputs on the recorded inputs; ``dense_logits`` (the task's):
    also the share of pixels whose argmax class agrees."""
    import torch

    sums: Dict[str, float] = {}
    maxima: Dict[str, float] = {}
    agree, pixels = 0, 0
    names = quantized.output_names
    for x, expected in zip(recorder.inputs, recorder.outputs):
        got = [t.numpy() for t in quantized.run(torch.from_numpy(x))]
        for name, e, g in zip(names, expected, got):
            scale = max(float(np.abs(e).max()), 1e-12)
            diff = np.abs(g - e)
            sums[name] = sums.get(name, 0.0) + float(diff.mean()) / scale
            maxima[name] = max(maxima.get(name, 0.0), float(diff.max()) / scale)
        if dense_logits:
            agree += int((got[0].argmax(axis=1) == expected[0].argmax(axis=1)).sum())
            pixels += expected[0].shape[0] * expected[0].shape[2] * expected[0].shape[3]
    count = max(len(recorder.inputs), 1)
    means = {name: total / count for name, total in sums.items()}
    return means, maxima, (agree / pixels if pixels else None)


def read_calibration_images(files: Sequence[Path]) -> List[np.ndarray]:
    """The images of ``files`` (uint8 RGB); an unreadable one is a one-line error naming it."""
    return [read_image(path) for path in files]


__all__ = ["DEFAULT_CALIBRATION_IMAGES", "QUANTIZATION_KEY", "QuantizationResult", "SCHEMES", "calibration_files",
           "quantize_int8", "read_calibration_images", "weight_nodes"]
