"""Necks: modules between a backbone's stage outputs and the heads."""
from __future__ import annotations

from .fpn import FPN

__all__ = ["FPN"]
