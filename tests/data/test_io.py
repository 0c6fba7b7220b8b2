"""read_image / read_label: formats, EXIF orientation, palettes, 16-bit values, bad files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from knet.data.io import decode_image, encode_image, read_image, read_label, write_image
from knet.errors import DataError


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)


def test_png_round_trip_is_rgb(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_decodes_like_opencv(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    expected = cv2.cvtColor(cv2.imread(str(tmp_path / "a.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), expected)


def test_non_ascii_path(tmp_path, rgb):
    folder = tmp_path / "données 画像"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "é.png")
    np.testing.assert_array_equal(read_image(folder / "é.png"), rgb)


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[:5] = (255, 0, 0)  # a red band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3)
    # After a clockwise rotation the top band is on the right.
    assert out[:, -3:, 0].mean() > 200 and out[:, :3, 0].mean() < 50


def test_grayscale_rgba_and_16bit_images(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and tuple(out[0, 0]) == (200, 100, 50)

    deep = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out[..., 0], (deep >> 8).astype(np.uint8))


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"not an image at all" * 10, "cannot decode"),
])
def test_bad_image_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_and_missing_image(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.png"):
        read_image(tmp_path / "t.png")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="folder"):
        read_image(tmp_path)


def _smooth_jpeg(path, progressive=False):
    """A 240x320 JPEG of smooth gradients (a photo's statistics rather than noise's); its bytes."""
    y, x = np.mgrid[0:240, 0:320]
    image = cv2.GaussianBlur(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8), (0, 0), 3)
    Image.fromarray(image).save(path, quality=90, progressive=progressive)
    return path.read_bytes()


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_jpeg_is_refused_naming_the_file(tmp_path, progressive, keep):
    data = _smooth_jpeg(tmp_path / "whole.jpg", progressive)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as info:
        read_image(cut)
    message = str(info.value)
    assert message == f"{cut}: truncated image file (the data ends before the image does)"


def test_truncation_is_caught_where_opencv_returns_an_image(tmp_path, monkeypatch):
    # Many OpenCV builds decode a cut-off JPEG with grey rows and a warning only: imitate one.
    data = _smooth_jpeg(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    lenient = lambda buffer, flags: np.zeros((240, 320, 3), np.uint8)  # noqa: E731
    monkeypatch.setattr(cv2, "imdecode", lenient)
    with pytest.raises(DataError, match=r"cut.jpg: truncated image file"):
        read_image(tmp_path / "cut.jpg")
    read_image(tmp_path / "whole.jpg")  # a whole file still reads


def test_bytes_after_the_jpeg_end_are_not_truncation(tmp_path):
    # Some cameras append data after the end-of-image marker; the image itself is whole.
    data = _smooth_jpeg(tmp_path / "whole.jpg")
    (tmp_path / "tail.jpg").write_bytes(data + b"trailing camera data")
    np.testing.assert_array_equal(read_image(tmp_path / "tail.jpg"), read_image(tmp_path / "whole.jpg"))


def test_decode_image_names_what_it_was_given(tmp_path):
    data = _smooth_jpeg(tmp_path / "whole.jpg")
    np.testing.assert_array_equal(decode_image(data, "upload"), read_image(tmp_path / "whole.jpg"))
    for content, message in ((b"", "upload 'x': image file is empty"),
                             (data[: len(data) // 2], "upload 'x': truncated"),
                             (b"%PDF-1.4 not an image", "upload 'x': cannot decode image")):
        with pytest.raises(DataError, match=message):
            decode_image(content, "upload 'x'")


def test_encode_image_gives_the_bytes_write_image_writes(tmp_path, rgb):
    labels = (rgb[..., 0] % 7).astype(np.uint8)
    write_image(tmp_path / "l.png", labels)
    assert encode_image(labels, ".png") == (tmp_path / "l.png").read_bytes()


def test_label_grayscale_and_palette(tmp_path):
    label = np.array([[0, 1, 2], [3, 255, 4]], np.uint8)
    Image.fromarray(label).save(tmp_path / "l.png")
    out = read_label(tmp_path / "l.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, label)

    pal = Image.fromarray(label, mode="P")
    pal.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)  # indices, not colours


def test_label_16bit_keeps_values(tmp_path):
    label = np.array([[0, 300], [1000, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "l16.png"), label)
    out = read_label(tmp_path / "l16.png")
    np.testing.assert_array_equal(out.astype(np.int64), label.astype(np.int64))


def test_label_grey_rgb_is_accepted_colour_rgb_is_not(tmp_path):
    grey = np.repeat(np.array([[1, 2], [3, 4]], np.uint8)[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_label(tmp_path / "grey.png"), grey[..., 0])
    colour = grey.copy()
    colour[0, 0] = (10, 20, 30)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png: colour \(RGB\) label"):
        read_label(tmp_path / "colour.png")


def test_bad_label_names_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="x.png: cannot decode label"):
        read_label(tmp_path / "x.png")
    with pytest.raises(DataError, match="y.png: label file not found"):
        read_label(tmp_path / "y.png")


def test_write_image_is_atomic_and_round_trips(tmp_path, rgb):
    write_image(tmp_path / "sub" / "o.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "o.png"), rgb)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.png"]  # no temp file left
