"""Helpers of the ``knet serve`` tests: -tiny models saved as native directories (random weights,
seeded) with a small test scale, and pictures as the bytes a client uploads."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

import knet

TEST_SCALE = (128, 128)


def save_tiny(directory: Path, preset: str, **overrides) -> Path:
    import torch

    torch.manual_seed(0)
    model = knet.build_model(preset, **{"data.test_scale": TEST_SCALE, **overrides})
    knet.save_pretrained(model, directory)
    return directory


def scene(seed: int, height: int = 96, width: int = 128, noise: int = 12) -> np.ndarray:
    """A uint8 RGB picture of a few flat rectangles with noise of +-``noise`` (segments show on it)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(4):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y0:y0 + rng.integers(height // 4, height // 2), x0:x0 + rng.integers(width // 4, width // 2)] = \
            rng.integers(0, 256, 3)
    grain = rng.integers(-noise, noise + 1, image.shape)
    return np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def encoded(image: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **params)
    return buffer.getvalue()
