"""``knet test``: evaluate a checkpoint on a dataset -- aAcc, mIoU, mAcc, per-class IoU/Acc.

    knet test --model knet-r50-fcn --checkpoint knet_s3_fcn_r50-d8_....pth \\
        --data-root data/ade/ADEChallengeData2016 [--tta] [--out metrics.json]
    knet test --checkpoint runs/mine/iter_8000.pth --dataset folder --data-root my_data --split val
    torchrun --nproc_per_node=2 -m knet test ...     # every process evaluates its share of the images

A progress bar goes to stderr; the per-class table and the summary to stdout. ``--out`` writes
``{"aAcc", "mIoU", "mAcc", "per_class": {name: {"IoU", "Acc"}}}`` (percent, 2 decimals, null
where undefined). A bad file stops the run with a message naming it (nothing is written to
``--out``); ``--skip-bad`` skips such files and lists them at the end.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import KnetError
from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_weights(parser, required=True)
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
    options.add_test_pipeline(parser)
    parser.add_argument("--workers", type=int, default=2, metavar="W",
                        help="processes reading the files (0: read in the main process)")
    options.add_device(parser)
    parser.add_argument("--out", default=None, metavar="metrics.json", help="write the metrics as JSON")
    parser.add_argument("--show-dir", default=None, metavar="DIR",
                        help="write a ground truth | prediction colour overlay per image into DIR")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity for --show-dir (default 0.5)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent files (listed at the end) instead of stopping")
    options.add_quiet(parser)
    options.add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import dist_info_from_env, init_distributed, leave_process_group, process_device

    options.check_positive("batch-size", args.batch_size)
    options.check_positive("workers", args.workers, minimum=0)
    if not 0.0 <= args.opacity <= 1.0:
        raise KnetError(f"--opacity must be between 0 and 1, got {args.opacity}")
    info = dist_info_from_env()
    device = process_device(args.device, info.local_rank)
    owns_group = init_distributed(info, device)
    finished = False
    try:
        _evaluate(args, info, device)
        finished = True
    finally:
        if owns_group:
            leave_process_group(synchronize=finished)
    return 0


def _evaluate(args: argparse.Namespace, info, device) -> None:
    """Every rank evaluates its share of the images; rank 0 prints and writes the results."""
    from ..checkpoint import load_model
    from ..config import parse_set_options
    from ..data.datasets import build_dataset, detect_dataset_kind
    from ..engine.evaluation import run_evaluation, write_json
    from ..tasks import get_task

    kind = args.dataset or detect_dataset_kind(args.data_root)
    if args.reduce_zero_label and kind != "folder":
        raise KnetError("--reduce-zero-label applies to folder datasets (ADE20K always reduces label 0)")
    model = load_model(args.checkpoint, args.model, parse_set_options(args.overrides) or None)
    dataset_kwargs = {"reduce_zero_label": True} if args.reduce_zero_label else {}
    dataset = build_dataset(kind, args.data_root, args.split, ignore_index=model.config.data.ignore_index,
                            **dataset_kwargs)
    task = get_task(model.config.task)
    result = run_evaluation(
        model, dataset, task=task, mode=args.mode, tta=args.tta, batch_size=args.batch_size, device=device,
        workers=args.workers, crop_size=args.crop_size, stride=args.stride, test_scale=args.test_scale,
        skip_bad=args.skip_bad, show_dir=args.show_dir, opacity=args.opacity,
        progress=not args.quiet, dist_info=info,
    )
    if not info.is_main:
        return
    print(task.format_metrics(result.metrics))
    ranks = f" x {info.world_size} processes" if info.distributed else ""
    print(f"{result.num_images} images, {dataset.num_classes} classes, "
          f"{'multi-scale + flip' if args.tta else 'single scale'}, {args.mode} inference on {device}{ranks}")
    if args.out:
        write_json(args.out, result.metrics)
        print(f"wrote {args.out}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad item(s):", file=sys.stderr)
        for path, message in result.skipped:
            print(f"  {message}", file=sys.stderr)
