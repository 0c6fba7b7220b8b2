"""Moved: the test pipeline is :mod:`knet.inference.pipeline`, the device resolver
:mod:`knet.utils.device`. This module keeps the old import path working."""
from ..inference.pipeline import MODES, TestPipeline, TorchRunner  # noqa: F401
from ..utils.device import resolve_device  # noqa: F401
