"""Exporting knet models to other runtimes: :func:`knet.export.onnx.export_onnx` (``knet export``).

The runtime side is :class:`knet.inference.onnx_runner.OnnxRunner`."""
from __future__ import annotations

from .onnx import ExportResult, ParityResult, check_parity, export_onnx

__all__ = ["ExportResult", "ParityResult", "check_parity", "export_onnx"]
