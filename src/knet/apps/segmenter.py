"""Moved to :mod:`knet.inference.segmenter`; this module keeps the old import path working."""
from ..inference.segmenter import *  # noqa: F401,F403
from ..inference.segmenter import Segmenter, SegmentationResult  # noqa: F401
