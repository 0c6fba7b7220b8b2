"""Exporting knet models to other runtimes: :func:`knet.export.onnx.export_onnx` (``knet export``), laid
out for an export target (:mod:`knet.export.targets`).

The runtime side is :class:`knet.inference.onnx_runner.OnnxRunner`."""
from __future__ import annotations

from .onnx import ExportResult, ParityResult, check_parity, export_onnx
from .targets import DEFAULT_TARGET, TARGET_NAMES, TARGETS, Target, get_target

__all__ = ["DEFAULT_TARGET", "ExportResult", "ParityResult", "TARGETS", "TARGET_NAMES", "Target", "check_parity",
           "export_onnx", "get_target"]
