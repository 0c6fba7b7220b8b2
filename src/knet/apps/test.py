"""``knet test``: evaluate a checkpoint on a dataset -- aAcc, mIoU, mAcc, per-class IoU/Acc.

    knet test --model knet-r50-fcn --checkpoint knet_s3_fcn_r50-d8_....pth \\
        --data-root data/ade/ADEChallengeData2016 [--tta] [--out metrics.json]
    knet test --checkpoint runs/mine/iter_8000.pth --dataset folder --data-root my_data --split val

A progress bar goes to stderr; the per-class table and the summary to stdout. ``--out`` writes
``{"aAcc", "mIoU", "mAcc", "per_class": {name: {"IoU", "Acc"}}}`` (percent, 2 decimals, null
where undefined). A bad file stops the run with a message naming it (nothing is written to
``--out``); ``--skip-bad`` skips such files and lists them at the end.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import KnetError
from .options import size_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="preset name (see `knet models`); may be left out when the checkpoint carries "
                             "its config (a native directory or a knet training checkpoint)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="reference .pth, knet training checkpoint, or native directory")
    parser.add_argument("--data-root", required=True, metavar="ROOT",
                        help="ADE20K: the folder holding images/ and annotations/ (or its parent); "
                             "folder dataset: the folder holding classes.txt, images/ and masks/")
    parser.add_argument("--dataset", choices=("ade20k", "folder"), default=None,
                        help="dataset layout (default: folder when ROOT has classes.txt, ade20k when it has "
                             "annotations/ or ADEChallengeData2016/)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: validation for ade20k, val for folder)")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="folder dataset: mask value 0 means ignore; the other values move down by one")
    parser.add_argument("--tta", action="store_true",
                        help="multi-scale (0.5-1.75) + flip, the protocol of the results table's ms+flip column")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole-image (the reference's setting for K-Net) or sliding-window inference")
    parser.add_argument("--crop-size", type=size_pair, default=None, metavar="N|W,H",
                        help="slide mode: window size (default: the config's crop, 512 or 640)")
    parser.add_argument("--stride", type=size_pair, default=None, metavar="N|W,H",
                        help="slide mode: window step (default: two thirds of the crop, 341 for 512)")
    parser.add_argument("--test-scale", type=size_pair, default=None, metavar="W,H",
                        help="keep-ratio resize to fit this size (default: the config's, 2048,512 or 2048,640)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B",
                        help="images per step; same result as 1 (images of equal size are batched together)")
    parser.add_argument("--workers", type=int, default=2, metavar="W",
                        help="processes reading the files (0: read in the main process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--out", default=None, metavar="metrics.json", help="write the metrics as JSON")
    parser.add_argument("--show-dir", default=None, metavar="DIR",
                        help="write a ground truth | prediction colour overlay per image into DIR")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity for --show-dir (default 0.5)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent files (listed at the end) instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.test_scale=2048,640 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..config import parse_set_options
    from ..data.datasets import build_dataset, detect_dataset_kind
    from ..engine.evaluation import format_table, run_evaluation, write_json
    from ..engine.inference import resolve_device

    if args.batch_size < 1:
        raise KnetError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise KnetError(f"--workers must be 0 or more, got {args.workers}")
    if not 0.0 <= args.opacity <= 1.0:
        raise KnetError(f"--opacity must be between 0 and 1, got {args.opacity}")
    kind = args.dataset or detect_dataset_kind(args.data_root)
    if args.reduce_zero_label and kind != "folder":
        raise KnetError("--reduce-zero-label applies to folder datasets (ADE20K always reduces label 0)")
    device = resolve_device(args.device)
    dataset_kwargs = {"reduce_zero_label": True} if args.reduce_zero_label else {}
    dataset = build_dataset(kind, args.data_root, args.split, **dataset_kwargs)
    model = load_model(args.checkpoint, args.model, parse_set_options(args.overrides) or None)
    result = run_evaluation(
        model, dataset, mode=args.mode, tta=args.tta, batch_size=args.batch_size, device=device,
        workers=args.workers, crop_size=args.crop_size, stride=args.stride, test_scale=args.test_scale,
        skip_bad=args.skip_bad, show_dir=args.show_dir, opacity=args.opacity, progress=not args.quiet,
    )
    print(format_table(result.metrics))
    print(f"{result.num_images} images, {dataset.num_classes} classes, "
          f"{'multi-scale + flip' if args.tta else 'single scale'}, {args.mode} inference on {device}")
    if args.out:
        write_json(args.out, result.metrics)
        print(f"wrote {args.out}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad item(s):", file=sys.stderr)
        for path, message in result.skipped:
            print(f"  {message}", file=sys.stderr)
    return 0
