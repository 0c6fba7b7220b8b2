"""ONNX export of the K-Net models (semantic, panoptic, instance), with knet's config inside.

    knet export --model knet-r50-fcn --checkpoint ref.pth --format onnx --out knet-r50-fcn.onnx

The file holds the model-runner interface (:class:`knet.inference.pipeline.TorchRunner`) of one
whole-image forward:

- input ``images``: float32 (N, 3, H, W), normalised as the config's ``data.mean``/``data.std``;
  any H, W for semantic models, multiples of 32 for panoptic/instance models (their pipeline pads);
- semantic models: ``logits`` (N, C, H, W) at the input size (``KNet.inference``);
- panoptic/instance models: the last stage's ``cls_logits`` (N, K, C) and stride-4 ``mask_logits``
  (N, K, H/4, W/4), what the post-processing reads (``KNetMaskSegmentor.inference``).

Batch, height and width are dynamic: one file serves every size. ``metadata_props`` carry
``knet.config`` (``config.to_json()``: task, class names, palette, normalisation, test scale),
``knet.version`` and ``knet.target``; :class:`knet.inference.onnx_runner.OnnxRunner` reads them back.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then ONNX opset 18+). Adaptive
average pooling (PSP/UPerNet pyramid pooling, the ASPP image pool) has no ONNX operator for sizes
the bins do not divide, and torch's decomposition bakes the example's bins into the graph, so the
export runs on a copy of the model whose pooling layers average with two bin-weight matrices built
from the input's size (:class:`SizeGenericAdaptiveAvgPool2d`; the same bins, equal up to float
rounding). The export ``target`` (:mod:`knet.export.targets`: ``cpu``, ``cpu-vnni``, ``gpu``),
not the exporting machine, decides the layout: for the CPU targets the copy's BatchNorms are
folded and its wide 3x3 convolutions become knet's Winograd F(4x4, 3x3) operator, which the
exporter writes as plain ONNX operators (:func:`winograd_onnx`), because ONNX Runtime's own CPU
convolutions are direct and Winograd needs fewer multiplications. The number of such convolutions
is stored as ``knet.winograd``; int8 quantization (:mod:`knet.export.quantize`) leaves them
float32. A parity check (ONNX Runtime against the torch model on random inputs of two sizes) runs
before the file is moved into place; a failed export or check leaves no file.
"""
from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import KnetError
from ..inference.onnx_runner import (CONFIG_KEY, INPUT_NAME, INSTALL_HINT, PRECISION_KEY, TARGET_KEY, VERSION_KEY,
                                     WINOGRAD_KEY, OnnxRunner, import_onnxruntime)
from ..models.fuse import fold_batch_norms
from ..models.winograd import INPUT_TILE, OUTPUT_TILE, WinogradConv2d, transform_matrices
from ..utils.atomic import atomic_path
from ..utils.device import module_device
from ..utils.precision import precision_name
from .targets import DEFAULT_TARGET, get_target

PathLike = Union[str, "os.PathLike[str]"]

MIN_OPSET = 18
# The example traced. Every count derived from its size must be at least 2 (Swin's 7x7 windows
# at stride 32 need sides above 224): a count of 1 is traced as a broadcast, and the file would
# then serve only the sizes that give 1. It and the task's second size (``Task.onnx_check_shape``)
# are the parity check's inputs.
EXAMPLE_SHAPE = (2, 3, 256, 320)
# The narrowest 3x3 convolution written as Winograd (input and output channels): below it the
# tile copies cost as much as the multiplications Winograd saves.
WINOGRAD_MIN_CHANNELS = 512


# --------------------------------------------------------------------------------------------
# Export-friendly layers
# --------------------------------------------------------------------------------------------
def _bin_weights(size: Any, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) weights of adaptive average pooling along one axis: row i averages the
    positions [floor(i size / bins), ceil((i + 1) size / bins)), as torch's adaptive pooling."""
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    position = torch.arange(size, device=like.device)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class SizeGenericAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products whose bin weights come from the input's
    size, so that an exported graph pools correctly at every size: (N, C, H, W) -> (N, C, oh, ow)."""

    def __init__(self, output_size: Union[int, Tuple[int, int]]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or any(s is None for s in size):
            raise KnetError(f"cannot export adaptive pooling to {output_size}: both output sides must be given")
        self.output_size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bin_weights(x.shape[-2], self.output_size[0], x)  # (oh, H)
        cols = _bin_weights(x.shape[-1], self.output_size[1], x)  # (ow, W)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def winograd_onnx(x: Any, transformed_weight: Any, dilation: int, bias: Any = None) -> Any:
    """The ONNX graph of ``knet::winograd_convolution`` (:mod:`knet.models.winograd`), undilated:
    (N, C, H, W) with transformed filters (36, C, K) and an optional (K,) bias -> (N, K, H, W), for
    any size (shapes are read from the tensors at run time, so ``torch.export`` sees one operator
    whose output has its input's size, instead of reasoning about tile counts: that took minutes
    per convolution).

    - input transform ``B^T d B`` of every 6x6 tile (stride 4): two convolutions of each channel
      alone (N C images of one channel) with B^T's rows as filters, (6, 1) with stride (4, 1), then
      (1, 6) with stride (1, 4), after the convolution's zero padding of 1 plus 4 more at the end
      (ceil(H / 4) tiles): (N C 6, 6, tiles_y, tiles_x) without copying tiles out of the map;
    - the 36 products, one batched (K, C) @ (C, tiles) matrix product;
    - the output transform, one (16, 36) matrix product, and a transpose puts the 4x4 blocks in
      place."""
    import onnx_ir as ir  # the ONNX extra's (the exporter's own dependencies)
    from onnxscript import opset18 as op

    def _constant(array: np.ndarray) -> Any:
        return op.Constant(value=ir.tensor(np.ascontiguousarray(array, dtype=np.float32)))

    def _ints(*values: int) -> Any:
        return op.Constant(value_ints=list(values))

    if dilation != 1:
        raise KnetError(f"the ONNX Winograd convolution is undilated, got dilation {dilation}")
    m, a = OUTPUT_TILE, INPUT_TILE
    b_t, a_t = (t.numpy() for t in transform_matrices(torch.empty((), dtype=torch.float64)))
    batch, batch_channels, size = op.Shape(x, start=0, end=1), op.Shape(x, start=0, end=2), op.Shape(x, start=2, end=4)
    one_channel = op.Reshape(x, op.Concat(_ints(-1, 1), size, axis=0))  # (N C, 1, H, W)
    padded = op.Pad(one_channel, _ints(0, 0, 1, 1, 0, 0, m, m))
    rows = op.Conv(padded, _constant(b_t.reshape(a, 1, a, 1)), strides=[m, 1])  # (N C, 6, tiles_y, W + 5)
    rows = op.Reshape(rows, op.Concat(_ints(-1, 1), op.Shape(rows, start=2, end=4), axis=0))
    tiles = op.Conv(rows, _constant(b_t.reshape(a, 1, 1, a)), strides=[1, m])  # (N C 6, 6, tiles_y, tiles_x)
    grid = op.Shape(tiles, start=2, end=4)
    transformed = op.Transpose(op.Reshape(tiles, op.Concat(batch_channels, _ints(a * a, -1), axis=0)),
                               perm=[2, 0, 1, 3])  # (36, N, C, tiles)
    filters = op.Unsqueeze(op.Transpose(transformed_weight, perm=[0, 2, 1]), _ints(1))  # (36, 1, K, C)
    products = op.MatMul(filters, transformed)  # (36, N, K, tiles): the convolution's multiplications
    blocks = op.MatMul(_constant(np.kron(a_t, a_t)), op.Reshape(products, _ints(a * a, -1)))  # (16, N K tiles)
    blocks = op.Reshape(blocks, op.Concat(_ints(m, m), batch, _ints(-1), grid, axis=0))
    blocks = op.Transpose(blocks, perm=[2, 3, 4, 0, 5, 1])  # (N, K, tiles_y, 4, tiles_x, 4)
    out = op.Reshape(blocks, op.Concat(batch, _ints(-1), op.Mul(grid, _ints(m)), axis=0))
    out = op.Slice(out, _ints(0, 0), size, _ints(2, 3))
    return out if bias is None else op.Add(out, op.Reshape(bias, _ints(1, -1, 1, 1)))


# The exporter's translations of knet's own operators.
TRANSLATIONS = {torch.ops.knet.winograd_convolution.default: winograd_onnx}


def exportable_copy(model: nn.Module, winograd: bool = True) -> nn.Module:
    """A CPU float32 eval-mode copy of ``model`` without gradients, with every
    ``nn.AdaptiveAvgPool2d`` replaced by :class:`SizeGenericAdaptiveAvgPool2d`. With ``winograd``,
    its BatchNorms are folded into their convolutions (ONNX Runtime fuses a BatchNorm into a
    ``Conv`` node, not into matrix products), and every undilated 3x3 convolution that
    :class:`~knet.models.winograd.WinogradConv2d` takes, with at least ``WINOGRAD_MIN_CHANNELS``
    channels in and out, becomes one (exported by :func:`winograd_onnx`); without, any
    ``WinogradConv2d`` in ``model`` becomes a plain convolution again. ``model`` is left as it is."""
    clone = copy.deepcopy(model).to("cpu", torch.float32).eval().requires_grad_(False)
    if winograd:
        fold_batch_norms(clone)
    for module in list(clone.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, child_name, SizeGenericAdaptiveAvgPool2d(child.output_size))
            elif isinstance(child, nn.Conv2d) and WinogradConv2d.supports(child):
                wide = min(child.in_channels, child.out_channels) >= WINOGRAD_MIN_CHANNELS
                if winograd and child.dilation == (1, 1) and (wide or isinstance(child, WinogradConv2d)):
                    replacement = child if isinstance(child, WinogradConv2d) else WinogradConv2d.from_conv(child)
                    # Filters transformed in the graph, from the stored 3x3 weights: ONNX Runtime folds
                    # that product of constants when it loads the file, which stays 4x smaller.
                    replacement.transformed_weight = None
                elif isinstance(child, WinogradConv2d):
                    replacement = nn.Conv2d(child.in_channels, child.out_channels, 3, padding=child.padding,
                                            dilation=child.dilation, bias=child.bias is not None, device="meta")
                    replacement.weight, replacement.bias = child.weight, child.bias
                else:
                    continue
                setattr(module, child_name, replacement)
    return clone


def _winograd_in_graph(graph: Any) -> int:
    """How many Winograd convolutions an exported ``onnx_ir`` graph computes: the distinct module
    paths its nodes of ``knet::winograd_convolution`` came from (a module the forward does not
    use, such as an auxiliary head, is not in the graph)."""
    spaces = {node.metadata_props.get("namespace", "") for node in graph}
    return sum("knet.winograd_convolution" in space for space in spaces)


class _Forward(nn.Module):
    """The exported function: normalised images -> ``model.inference(images)`` (whole image)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Any:
        return self.model.inference(images)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
@dataclass
class ParityResult:
    """ONNX Runtime against torch on one random input: per output its max |difference| and the
    max |torch value| it is relative to."""

    shape: Tuple[int, ...]
    max_abs_diff: Dict[str, float]
    max_abs_ref: Dict[str, float]

    @property
    def relative(self) -> float:
        """The largest max |difference| / max |reference| over the outputs."""
        return max(self.max_abs_diff[k] / max(self.max_abs_ref[k], 1e-12) for k in self.max_abs_diff)

    def summary(self) -> str:
        size = "x".join(str(s) for s in self.shape)
        parts = ", ".join(f"{k} {self.max_abs_diff[k]:.2e} (of max |{k}| {self.max_abs_ref[k]:.3g})"
                          for k in self.max_abs_diff)
        return f"input {size}: max |onnxruntime - torch| {parts}"


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    opset: int
    exporter: str
    seconds: float
    size_mb: float
    winograd: int = 0  # 3x3 convolutions written as Winograd
    target: str = DEFAULT_TARGET  # the export target (knet.export.targets)
    precision: str = "fp32"
    parity: List[ParityResult] = field(default_factory=list)


def _require_exporter() -> None:
    """onnx, onnxscript (the dynamo exporter's) and onnxruntime (the parity check's), or a one-line
    error naming the extra."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise KnetError(f"ONNX export needs {' and '.join(missing)}: {INSTALL_HINT}")
    import_onnxruntime()


def _dynamic_shapes() -> Dict[str, Dict[int, str]]:
    """Dynamic batch, height and width, named so in the file. Names, not ``torch.export.Dim``
    objects: the exporter makes them ``Dim.DYNAMIC``, which accepts the models' harmless guards
    (a side of at least two pixels, ...) where a named ``Dim`` fails on them."""
    return {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}


def _check_dynamic(program: Any) -> None:
    """The exported input's batch, height and width are symbolic (a fallback of the exporter could
    have fixed them to the example's)."""
    dims = list(program.model.graph.inputs[0].shape)
    fixed = [axis for axis, dim in zip(("batch", "height", "width"), (dims[0], dims[2], dims[3]))
             if isinstance(dim, int)]
    if fixed:
        raise KnetError(f"the exporter fixed the {' and '.join(fixed)} of the input to the example's "
                        f"{tuple(dims)}: the file would serve one size only; nothing written")


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The exporter's log lines and warnings (missing torchvision ops, deprecations) only when
    ``verbose``."""
    if verbose:
        yield
        return
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_parity(model: nn.Module, runner: OnnxRunner, shape: Sequence[int], seed: int = 0) -> ParityResult:
    """Run ``model`` (torch, in eval mode where its parameters are) and ``runner`` (ONNX Runtime)
    on one random normal input of ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model.inference(x.to(module_device(model)))
    finally:
        model.train(was_training)
    expected = tuple(t.cpu() for t in expected) if isinstance(expected, tuple) else (expected.cpu(),)
    got = runner.run(x)
    diffs, refs = {}, {}
    for name, e, g in zip(runner.output_names, expected, got):
        if tuple(e.shape) != tuple(g.shape):
            raise KnetError(f"parity check: {name} has shape {tuple(g.shape)} in ONNX Runtime, "
                            f"{tuple(e.shape)} in torch, for an input of {tuple(shape)}")
        diffs[name] = float((e.float() - g).abs().max())
        refs[name] = float(e.abs().max())
    return ParityResult(tuple(shape), diffs, refs)


def export_onnx(model: nn.Module, path: PathLike, opset: int = MIN_OPSET, check: bool = True,
                tolerance: float = 1e-2, verbose: bool = False, winograd: Optional[bool] = None,
                target: str = DEFAULT_TARGET, precision: str = "fp32") -> ExportResult:
    """Export a knet model (``KNet`` or ``KNetMaskSegmentor`` with its ``config``) to ``path``.

    Args:
        model: the model, on any device (a CPU copy is exported; ``model`` is not changed).
        path: the ``.onnx`` file, written atomically (nothing is left there when the export or the
            check fails). Weights are stored inside the file (one file, below protobuf's 2 GB).
        opset: ONNX opset, at least 18.
        check: run :func:`check_parity` at the example's shape (batch 2) and at a second size
            (batch 1); a difference above ``tolerance`` x max |torch output| is an error. The
            default catches a wrong graph (a wrong pooling bin or padding differs by the order of
            the logits), not rounding: random weights amplify float32 rounding through the
            kernel-update stages (torch's own float32 result of a random full-size knet-r50-fcn
            is 1.7e-3 x max away from its float64 one); trained weights give ~1e-5.
        verbose: the exporter's progress lines.
        winograd: wide 3x3 convolutions as Winograd (:func:`exportable_copy`); None (the
            default) takes the target's float32 layout, True or False overrides it (False for the
            source of a ``cpu-vnni`` int8 file, whose every convolution is 8-bit).
        target: the runtime the file is for, one of :data:`knet.export.targets.TARGET_NAMES`
            (``cpu``, ``cpu-vnni``, ``gpu``), stored in its metadata as ``knet.target``; the
            exporting machine does not change the file.
        precision: ``fp32``, or ``fp16`` for GPUs (``target="gpu"``): every float tensor of the
            graph but its input and outputs in float16 (ONNX Runtime's float16 converter), stored
            as ``knet.precision``; bf16 is refused (ONNX Runtime has no bfloat16 convolutions).

    Returns:
        an :class:`ExportResult` (its ``parity`` empty without ``check``).
    """
    from ..checkpoint import with_class_meta
    from ..tasks import get_task

    if opset < MIN_OPSET:
        raise KnetError(f"opset {opset}: the exporter writes opset {MIN_OPSET} or newer")
    layout = get_target(target)
    precision = check_export_precision(precision, layout.name)
    if winograd is None:
        winograd = layout.winograd(quantized=False)
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "inference"):
        raise KnetError(f"cannot export a {type(model).__name__}: expected a knet model built from a config")
    _require_exporter()
    config = with_class_meta(config)
    task = get_task(config.task)
    exported = exportable_copy(model, winograd=winograd)
    example = torch.randn(*EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with _quiet(verbose):
        program = torch.onnx.export(
            _Forward(exported), (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(task.onnx_outputs), dynamic_shapes=_dynamic_shapes(), optimize=True,
            verbose=verbose, external_data=False, custom_translation_table=TRANSLATIONS)
    _check_dynamic(program)
    program.model.metadata_props[CONFIG_KEY] = config.to_json()
    program.model.metadata_props[VERSION_KEY] = __version__
    winograd_convolutions = _winograd_in_graph(program.model.graph)
    program.model.metadata_props[WINOGRAD_KEY] = str(winograd_convolutions)
    program.model.metadata_props[TARGET_KEY] = layout.name
    program.model.doc_string = f"knet {__version__}: {config.name} ({task.name})"
    path = Path(path)
    result = ExportResult(path=path, opset=opset, exporter="torch.onnx.export(dynamo=True)", seconds=0.0,
                          size_mb=0.0, winograd=winograd_convolutions, target=layout.name,
                          precision=precision)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        if precision == "fp16":
            _to_float16(tmp)
        result.seconds = time.perf_counter() - start
        result.size_mb = tmp.stat().st_size / 2**20
        if check:
            runner = OnnxRunner(tmp, device="cpu")
            for shape in (EXAMPLE_SHAPE, task.onnx_check_shape):
                parity = check_parity(model, runner, shape)
                result.parity.append(parity)
                if not parity.relative <= tolerance:
                    raise KnetError(f"parity check failed ({parity.summary()}; tolerance {tolerance:g} x max): "
                                    "no file written")
    return result


def check_export_precision(precision: str, target: str) -> str:
    """``precision``'s name (:func:`knet.utils.precision.precision_name`), or a one-line error unless
    it can be exported for ``target``: fp32 for every target, fp16 for ``gpu``; bf16 never (ONNX
    Runtime has no bfloat16 convolutions)."""
    precision = precision_name(precision)
    if precision == "bf16":
        raise KnetError("precision bf16: ONNX Runtime has no bfloat16 convolutions; export fp32 (or int8 with "
                        "--quantize) for CPUs, fp16 for GPUs")
    if precision == "fp16" and target != "gpu":
        raise KnetError(f"precision fp16 is for GPUs: export it for --target gpu (the {target} target runs fp32 "
                        "or int8)")
    return precision


def _to_float16(path: Path) -> None:
    """Rewrite the float32 ONNX file ``path`` in float16, its input and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns of values rounded to float16's range
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    model.metadata_props.add(key=PRECISION_KEY, value="fp16")
    onnx.save(model, str(path))


__all__ = ["ExportResult", "ParityResult", "SizeGenericAdaptiveAvgPool2d", "TRANSLATIONS", "check_parity",
           "check_export_precision", "export_onnx", "exportable_copy", "winograd_onnx"]
