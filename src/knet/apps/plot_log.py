"""``knet plot-log``: draw the loss and mIoU curves of a training ``log.jsonl`` into a PNG.

    knet plot-log runs/fcn/log.jsonl --out curves.png

The drawing is :func:`knet.engine.curves.plot_log`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.curves import plot_log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="a training log.jsonl (or the work dir holding it)")
    parser.add_argument("--out", metavar="PNG", default=None,
                        help="output image (default: curves.png beside the log)")
    parser.add_argument("--width", type=int, default=1200, metavar="N", help="image width in pixels (default 1200)")
    parser.add_argument("--height", type=int, default=450, metavar="N", help="image height in pixels (default 450)")


def run(args: argparse.Namespace) -> int:
    log = Path(args.log)
    if log.is_dir():
        log = log / "log.jsonl"
    out = Path(args.out) if args.out else log.with_name("curves.png")
    plot_log(log, out, size=(args.width, args.height))
    print(f"wrote {out}")
    return 0
