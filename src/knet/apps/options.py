"""Argument types shared by the command-line verbs."""
from __future__ import annotations

import argparse
from typing import Tuple


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
