"""Training curves: the loss and validation metrics of a training ``log.jsonl`` drawn into a PNG
(``knet plot-log``, the demo's ``curves.png``).

Drawn with Pillow alone (no plotting library needed): the left panel shows the training loss
(total and, thinner, the final-stage and auxiliary terms), the right one the validation metrics
against the iteration: mIoU, mAcc and aAcc (semantic), PQ, SQ and RQ (panoptic) or AP, AP50 and
AP75 (instance).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

from ..errors import KnetError

Colour = Tuple[int, int, int]

LOSS_SERIES: Sequence[Tuple[str, str, Colour, int]] = (
    ("loss", "loss (total)", (31, 119, 180), 3),
    ("decode.loss_ce.s3", "last stage", (255, 127, 14), 1),
    ("aux.loss_ce", "auxiliary", (44, 160, 44), 1),
    # The panoptic/instance presets' three stages: the last one's mask terms, and the kernel head's.
    ("s2_loss_cls", "last stage: class", (255, 127, 14), 1),
    ("s2_loss_dice", "last stage: dice", (188, 189, 34), 1),
    ("loss_rpn_seg", "kernel head: semantic", (44, 160, 44), 1),
)
VAL_SERIES: Sequence[Tuple[str, str, Colour, int]] = (
    ("mIoU", "mIoU", (214, 39, 40), 3),
    ("mAcc", "mAcc", (148, 103, 189), 1),
    ("aAcc", "aAcc", (140, 86, 75), 1),
    ("PQ", "PQ", (214, 39, 40), 3),
    ("SQ", "SQ", (148, 103, 189), 1),
    ("RQ", "RQ", (140, 86, 75), 1),
    ("AP", "AP", (214, 39, 40), 3),
    ("AP50", "AP50", (148, 103, 189), 1),
    ("AP75", "AP75", (140, 86, 75), 1),
)


class PlotLogError(KnetError):
    """A missing, unreadable or empty training log."""


@dataclass
class Series:
    label: str
    xs: List[float]
    ys: List[float]
    colour: Colour
    width: int


def read_log(path: Union[str, Path]) -> Tuple[List[Dict[str, float]], List[Dict[str, float]]]:
    """``(training records, validation records)`` of a ``log.jsonl``; a line cut short (a killed
    run) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise PlotLogError(f"{path}: no such log file (training writes WORK_DIR/log.jsonl)")
    train: List[Dict[str, float]] = []
    val: List[Dict[str, float]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "iter" not in record:
            continue
        if "loss" in record:
            train.append(record)
        elif any(key in record for key, _, _, _ in VAL_SERIES):
            val.append(record)
    if not train and not val:
        raise PlotLogError(f"{path}: no training or validation records")
    return train, val


def _series(records: List[Dict[str, float]], spec: Sequence[Tuple[str, str, Colour, int]]) -> List[Series]:
    out = []
    for key, label, colour, width in spec:
        points = [(float(r["iter"]), float(r[key])) for r in records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        if points:
            out.append(Series(label, [p[0] for p in points], [p[1] for p in points], colour, width))
    return out


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering
    ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10000:
        return f"{value / 1000:g}k"
    return f"{value:.4g}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when FreeType is available
    except (TypeError, OSError, ValueError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> Tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _panel(image: Image.Image, box: Tuple[int, int, int, int], series: List[Series], title: str,
           empty_message: str, legend_at_bottom: bool = False) -> None:
    """One set of axes in ``box`` (x0, y0, x1, y1) with ``series`` drawn against the iteration;
    the legend goes top right (falling curves) or bottom right (rising curves)."""
    draw = ImageDraw.Draw(image)
    font, title_font = _font(13), _font(16)
    x0, y0, x1, y1 = box
    tw, _ = _text_size(draw, title, title_font)
    draw.text(((x0 + x1 - tw) // 2, y0), title, fill=(0, 0, 0), font=title_font)
    left, top, right, bottom = x0 + 60, y0 + 30, x1 - 28, y1 - 40
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0), width=1)
    if not series:
        mw, mh = _text_size(draw, empty_message, font)
        draw.text(((left + right - mw) // 2, (top + bottom - mh) // 2), empty_message, fill=(110, 110, 110), font=font)
        return
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys]
    x_ticks = nice_ticks(0.0 if min(xs) >= 0 else min(xs), max(xs))
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    x_lo, x_hi = x_ticks[0], x_ticks[-1]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def to_px(x: float, y: float) -> Tuple[float, float]:
        px = left + (x - x_lo) / (x_hi - x_lo or 1.0) * (right - left)
        py = bottom - (y - y_lo) / (y_hi - y_lo or 1.0) * (bottom - top)
        return px, py

    for value in x_ticks:
        px, _ = to_px(value, y_lo)
        draw.line((px, top, px, bottom), fill=(230, 230, 230))
        draw.line((px, bottom, px, bottom + 5), fill=(0, 0, 0))
        text = _label(value)
        w, _ = _text_size(draw, text, font)
        draw.text((px - w / 2, bottom + 8), text, fill=(0, 0, 0), font=font)
    for value in y_ticks:
        _, py = to_px(x_lo, value)
        draw.line((left, py, right, py), fill=(230, 230, 230))
        draw.line((left - 5, py, left, py), fill=(0, 0, 0))
        text = _label(value)
        w, h = _text_size(draw, text, font)
        draw.text((left - 8 - w, py - h / 2 - 2), text, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0), width=1)
    xlabel = "iteration"
    w, _ = _text_size(draw, xlabel, font)
    draw.text(((left + right - w) / 2, bottom + 24), xlabel, fill=(0, 0, 0), font=font)

    for s in series:
        points = [to_px(x, y) for x, y in zip(s.xs, s.ys)]
        if len(points) > 1:
            draw.line(points, fill=s.colour, width=s.width, joint="curve")
        radius = 3 if len(points) <= 40 else 0
        for px, py in points if radius else []:
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=s.colour)
        if len(points) == 1:
            px, py = points[0]
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=s.colour)

    # legend, top right inside the axes
    entries = [(s.label, s.colour) for s in series]
    widths = [_text_size(draw, label, font)[0] for label, _ in entries]
    lw = max(widths) + 36
    lh = 18 * len(entries) + 6
    lx, ly = right - lw - 8, (bottom - lh - 8) if legend_at_bottom else top + 8
    draw.rectangle((lx, ly, lx + lw, ly + lh), fill=(255, 255, 255), outline=(160, 160, 160))
    for i, (label, colour) in enumerate(entries):
        cy = ly + 12 + 18 * i
        draw.line((lx + 6, cy, lx + 26, cy), fill=colour, width=3)
        draw.text((lx + 32, cy - 8), label, fill=(0, 0, 0), font=font)


def plot_log(log: Union[str, Path], out: Union[str, Path], size: Tuple[int, int] = (1200, 450),
             title: Optional[str] = None) -> Path:
    """Draw the curves of ``log`` (a ``log.jsonl``) into the PNG ``out``; returns ``out``."""
    width, height = int(size[0]), int(size[1])
    if width < 300 or height < 200:
        raise PlotLogError(f"image size {width}x{height} is too small (at least 300x200)")
    train, val = read_log(log)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    top = 0
    if title:
        draw = ImageDraw.Draw(image)
        font = _font(16)
        w, _ = _text_size(draw, title, font)
        draw.text(((width - w) // 2, 6), title, fill=(0, 0, 0), font=font)
        top = 28
    half = width // 2
    _panel(image, (0, top + 6, half, height - 4), _series(train, LOSS_SERIES), "training loss",
           "no training records")
    _panel(image, (half, top + 6, width, height - 4), _series(val, VAL_SERIES), "validation (%)",
           "no validation yet", legend_at_bottom=True)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, format="PNG")
    except OSError as err:
        raise PlotLogError(f"cannot write {out}: {err}") from None
    return out
