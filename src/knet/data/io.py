"""Reading images and label maps as the reference does, with errors that name the file.

Images are decoded by OpenCV exactly as the reference's ``LoadImageFromFile`` does
(``IMREAD_COLOR``: 3 channels, 8 bits, EXIF orientation applied) and then turned from BGR to RGB.
Labels are read with Pillow so that palette PNGs give their indices rather than their colours;
16-bit labels keep their values.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..utils.atomic import atomic_write_bytes
from ..errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

# Pillow modes that hold one value per pixel: the value is the class index.
# Image file suffixes (lower case) that folders and globs are searched for, by datasets and by
# ``knet predict`` (files named explicitly are tried whatever their suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                  ".pnm", ".jp2")

_INDEX_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "1"}
# Modes with an alpha channel beside one index channel (the alpha is not part of the label).
_INDEX_ALPHA_MODES = {"LA", "PA", "La"}
# Colour modes: accepted only when every pixel is grey (R == G == B), i.e. indices saved as RGB.
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa"}


def _read_bytes(path: PathLike, what: str) -> np.ndarray:
    """The file's bytes as a uint8 array (numpy I/O, so non-ASCII paths work on every OS)."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a {what} file, found a folder") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} file ({err.strerror or err})") from None
    if data.size == 0:
        raise DataError(f"{path}: {what} file is empty")
    return data


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as the reference does.

    Args:
        path: any format OpenCV decodes (JPEG, PNG, BMP, TIFF, WebP, ...).

    Returns:
        uint8 array (H, W, 3), RGB. Grayscale images are replicated to three channels, an alpha
        channel is dropped, 16-bit images are scaled to 8 bits (value >> 8) and the EXIF
        orientation is applied, all by OpenCV's ``IMREAD_COLOR`` decode, as in the reference.

    Raises:
        DataError: the file is missing, empty, truncated, corrupt or not an image (the message
            names it).
    """
    return decode_image(_read_bytes(path, "image"), path)


def decode_image(data: Union[bytes, np.ndarray], name: Any) -> np.ndarray:
    """Decode an encoded image (a file's bytes) as :func:`read_image` does.

    Args:
        data: the encoded bytes (or a uint8 array of them).
        name: what the error messages call the image (a path, an upload's name).

    Returns:
        uint8 array (H, W, 3), RGB.

    Raises:
        DataError: empty, truncated, corrupt or not an image (the message names ``name``).
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buffer.size == 0:
        raise DataError(f"{name}: image file is empty")
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if _truncated(buffer, decoded=bgr is not None):
        raise DataError(f"{name}: truncated image file (the data ends before the image does)")
    if bgr is None:
        raise DataError(f"{name}: cannot decode image (corrupt file or unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def _truncated(buffer: np.ndarray, decoded: bool) -> bool:
    """Whether Pillow's full decode of the bytes stops at their end ("image file is truncated").

    Depending on its version and the file, OpenCV's libjpeg returns a truncated JPEG with its
    missing rows grey and only a warning on stderr, so that a cut-off download would be segmented
    as if it were whole; ``knet predict``, ``knet test`` and ``knet serve`` refuse it instead. A
    JPEG that ends with its end-of-image marker is whole, which spares the common case a second
    decode; other images are asked only when OpenCV failed, to name the reason.
    """
    head, tail = buffer[:2].tobytes(), buffer[-2:].tobytes()
    if decoded and (head != _JPEG_START or tail == _JPEG_END):
        return False
    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as img:
            img.load()
    except OSError as err:  # UnidentifiedImageError is an OSError too: not Pillow's format, not truncated
        return "truncated" in str(err)
    except (SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return False


def read_label(path: PathLike) -> np.ndarray:
    """Read a label map (class index per pixel) with Pillow.

    Args:
        path: usually a PNG: grayscale (8 or 16 bit), palette (its indices are the classes), or
            an RGB/RGBA file whose pixels are all grey (indices saved as colour).

    Returns:
        integer array (H, W): uint8 for 8-bit and palette files, uint16/int32 for 16/32-bit
        files (values kept as they are), bool files as uint8 0/1.

    Raises:
        DataError: missing, empty or corrupt file, a colour label image (a colour per class
            instead of indices) or a floating-point image (the message names the file).
    """
    data = _read_bytes(path, "label")
    try:
        with Image.open(io.BytesIO(data.tobytes())) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode label image ({err})") from None
    if mode in _INDEX_MODES:
        label = array
    elif mode in _INDEX_ALPHA_MODES:
        label = array[..., 0]
    elif mode in _COLOUR_MODES:
        rgb = array[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise DataError(
                f"{path}: colour (RGB) label image; expected one class index per pixel "
                "(a grayscale or palette PNG)"
            )
        label = rgb[..., 0]
    else:
        raise DataError(
            f"{path}: unsupported label image mode {mode!r}; expected class indices "
            "(a grayscale, 16-bit or palette PNG)"
        )
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise DataError(f"{path}: label image is not a 2-D map of integers (mode {mode!r})")
    return np.ascontiguousarray(label)


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write a uint8 RGB (H, W, 3) or grayscale (H, W) image atomically (temp file + rename),
    in the format given by the suffix of ``path``; numpy I/O so non-ASCII paths work."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(image, path.suffix or ".png", name=path))


def encode_image(image: np.ndarray, suffix: str = ".png", name: Any = "image") -> bytes:
    """A uint8 RGB (H, W, 3) or grayscale (H, W) image (uint16 too, for PNG) encoded in the
    format of ``suffix``: exactly the bytes :func:`write_image` writes (``knet serve`` answers with
    them)."""
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(suffix, array)
    if not ok:
        raise DataError(f"{name}: cannot encode image as {suffix}")
    return encoded.tobytes()
