"""``knet test``: evaluate a checkpoint on a dataset -- the task's metrics: aAcc, mIoU, mAcc and
per-class IoU/Acc (semantic), PQ, SQ, RQ for all / things / stuff and per class (panoptic), COCO
mask AP (instance).

    knet test --model knet-r50-fcn --checkpoint knet_s3_fcn_r50-d8_....pth \\
        --data-root data/ade/ADEChallengeData2016 [--tta] [--out metrics.json]
    knet test --checkpoint runs/mine/iter_8000.pth --dataset folder --data-root my_data --split val
    knet test --checkpoint knet-r50-fcn.onnx --data-root data/ade/ADEChallengeData2016   # ONNX Runtime
    knet test --model knet-r50-fpn-panoptic --checkpoint knet_s3_r50_fpn_1x_coco-panoptic_....pth \\
        --data-root data/coco [--split val2017]
    knet test ... --data-root data/coco --split test-dev2017 --format-only results/   # COCO's formats
    torchrun --nproc_per_node=2 -m knet test ...     # every process evaluates its share of the images

The dataset layout is detected from ROOT (a COCO root holding both kinds is read as the one the
model's task evaluates on). A progress bar goes to stderr; the per-class table and the summary to
stdout. ``--out`` writes the metrics (percent, 2 decimals, null where undefined): ``{"aAcc",
"mIoU", "mAcc", "per_class": {name: {"IoU", "Acc"}}}``, ``{"PQ", "SQ", "RQ", "PQ_th", ...,
"RQ_st", "per_class": {name: {"PQ", "SQ", "RQ", ...}}}`` or ``{"AP", "AP50", "AP75", "APs", "APm",
"APl"}``. ``--format-only DIR`` writes the predictions in COCO's results formats instead
(``DIR/panoptic.json`` + ``DIR/panoptic/*.png``, or ``DIR/segm.json``), also for a split
without labels. A bad file stops the run with a message naming it (nothing is written to
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
                             "folder dataset: the folder holding classes.txt, images/ and masks/; "
                             "COCO: the folder holding annotations/ and the image folders")
    parser.add_argument("--dataset", choices=("ade20k", "folder", "coco_panoptic", "coco_instance"), default=None,
                        help="dataset layout (default: folder when ROOT has classes.txt, COCO when annotations/ "
                             "holds panoptic_*.json / instances_*.json, ade20k when it has annotations/ or "
                             "ADEChallengeData2016/)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: validation for ade20k, val for folder, val2017 for COCO)")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="folder dataset: mask value 0 means ignore; the other values move down by one")
    options.add_test_pipeline(parser)
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="processes reading the files (0: read in the main process)")
    options.add_device(parser)
    options.add_threads(parser)
    options.add_compile(parser)
    options.add_precision(parser)
    parser.add_argument("--out", default=None, metavar="metrics.json", help="write the metrics as JSON")
    parser.add_argument("--format-only", default=None, metavar="DIR",
                        help="panoptic / instance models: write the predictions into DIR in COCO's results "
                             "formats (panoptic.json + panoptic/*.png, or segm.json) instead of evaluating; "
                             "works on splits without labels (test-dev)")
    parser.add_argument("--show-dir", default=None, metavar="DIR",
                        help="write a ground truth | prediction colour overlay per image into DIR")
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X",
                        help="overlay opacity for --show-dir, 0..1 (default 0.5)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable or inconsistent files (listed at the end) instead of stopping")
    options.add_quiet(parser)
    options.add_overrides(parser)


allocator_setting = options.inference_allocator


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import dist_info_from_env, init_distributed, leave_process_group, process_device

    options.check_positive("batch-size", args.batch_size)
    options.check_positive("workers", args.workers, minimum=0)
    options.check_positive("threads", args.threads)
    options.set_torch_threads(args)
    if not 0.0 <= args.opacity <= 1.0:
        raise KnetError(f"--opacity must be between 0 and 1, got {args.opacity}")
    if args.format_only and args.out:
        raise KnetError("--out writes metrics, which --format-only does not compute: pass one of them")
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
    from ..data.datasets import build_dataset, detect_dataset_kind
    from ..engine.evaluation import run_evaluation, write_json
    from ..tasks import get_task

    if args.reduce_zero_label and args.dataset not in (None, "folder"):
        raise KnetError("--reduce-zero-label applies to folder datasets (ADE20K always reduces label 0)")
    options.refuse_torch_options_for_onnx(args)
    if options.checkpoint_is_onnx(args):
        if info.distributed:
            raise KnetError("an .onnx --checkpoint runs in one process: start knet test without torchrun")
        model = options.load_weights(args)
    else:
        model = options.load_weights(args, device=device)
    task = get_task(model.config.task)
    kind = args.dataset or detect_dataset_kind(args.data_root, preferred=task.dataset_kinds)
    if args.reduce_zero_label and kind != "folder":
        raise KnetError("--reduce-zero-label applies to folder datasets (ADE20K always reduces label 0)")
    if kind not in task.dataset_kinds:
        raise KnetError(f"{task.name} models are evaluated on {' or '.join(task.dataset_kinds)} datasets; "
                        f"{args.data_root} is read as {kind}")
    dataset_kwargs = task.dataset_options(model.config, training=False)
    if args.reduce_zero_label:
        dataset_kwargs["reduce_zero_label"] = True
    dataset = build_dataset(kind, args.data_root, args.split, **dataset_kwargs)
    _refuse_overwriting(args, dataset)
    result = run_evaluation(
        model, dataset, task=task, mode=args.mode, tta=args.tta, batch_size=args.batch_size, device=device,
        workers=args.workers, crop_size=args.crop_size, stride=args.stride, test_scale=args.test_scale,
        skip_bad=args.skip_bad, show_dir=args.show_dir, opacity=args.opacity,
        progress=not args.quiet, dist_info=info, format_dir=args.format_only, compile=args.compile,
        precision=args.precision,
    )
    if not info.is_main:
        return
    if args.format_only:
        print(f"wrote the predictions on {result.metrics['num_images']} images: " + ", ".join(result.metrics["files"]))
    else:
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


def _refuse_overwriting(args: argparse.Namespace, dataset) -> None:
    """Before any work: no output may replace the checkpoint or a file of the dataset."""
    from pathlib import Path

    from ..utils.outputs import refuse_input_folders, refuse_overwriting_inputs

    folders = [getattr(dataset, name, None) for name in ("root", "image_dir", "label_dir", "mask_dir", "panoptic_dir")]
    outputs = [("--out", args.out)] if args.out else []
    if args.format_only:
        outputs += [("--format-only", Path(args.format_only) / name) for name in ("panoptic.json", "segm.json")]
    refuse_overwriting_inputs(outputs, [args.checkpoint, getattr(dataset, "ann_file", None)] + folders)
    refuse_input_folders([("--show-dir", args.show_dir),
                          ("--format-only", args.format_only and Path(args.format_only) / "panoptic")], folders[1:])
