"""``knet train``: train a preset with the reference's recipe, on one process or under torchrun.

    knet train --model knet-r50-fcn --dataset ade20k --data-root data/ade --work-dir runs/fcn
    torchrun --nproc_per_node=8 -m knet train --model knet-r50-fcn ...   # 8 GPUs, 2 images each
    knet train ... --resume                  # continue from runs/fcn/last_checkpoint
    torchrun --nproc_per_node=8 -m knet train --model knet-r50-fpn-panoptic --data-root data/coco \\
        --work-dir runs/pan --backbone-weights resnet50.pth   # 12 epochs of train2017

Options left out keep the preset's recipe (``knet config NAME`` prints it); ``--set key=value``
overrides any config field (e.g. ``--set train.lr=1e-3 data.crop_size=256,256``). The panoptic and
instance recipes count in epochs (``train.epochs``, ``train.milestone_epochs``), converted to
iterations from the training set and the total batch; ``--iters`` (or ``--set train.iters=N``)
replaces them with a fixed number of iterations.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ..errors import KnetError
from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser, required=True)
    parser.add_argument("--data-root", required=True, metavar="ROOT", help="dataset folder")
    parser.add_argument("--work-dir", required=True, metavar="DIR",
                        help="where checkpoints, log.jsonl, config.json and tb/ go")
    parser.add_argument("--dataset", choices=("auto", "ade20k", "folder", "coco_panoptic", "coco_instance"),
                        default="auto",
                        help="dataset layout; auto: folder when ROOT has classes.txt, COCO when annotations/ holds "
                             "panoptic_*.json / instances_*.json (the kind the model's task reads), ade20k when it "
                             "has annotations/ (or ADEChallengeData2016/)")
    parser.add_argument("--train-split", metavar="NAME",
                        help="training split (default: train; train2017 for a COCO root that has it)")
    parser.add_argument("--val-split", metavar="NAME",
                        help="validation split (default: val; val2017 for a COCO root that has it)")
    parser.add_argument("--iters", type=int, metavar="N",
                        help="total iterations (preset: 80000, or the panoptic/instance presets' epochs)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="images per process (preset: 2)")
    parser.add_argument("--val-interval", type=int, metavar="N", help="validate every N iterations (preset: 8000)")
    parser.add_argument("--checkpoint-interval", type=int, metavar="N",
                        help="write iter_<I>.pth every N iterations (preset: 8000)")
    parser.add_argument("--keep", type=int, default=3, metavar="N",
                        help="keep the newest N iteration checkpoints, plus the best (default 3)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue a run: from PATH, or without PATH from the work dir's newest checkpoint")
    parser.add_argument("--load-from", metavar="PATH",
                        help="start from these weights (reference .pth, knet checkpoint or model dir); "
                             "class-dependent tensors are re-initialised when the class count differs")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="ImageNet weights for the backbone (ResNetV1c, torchvision ResNet or Swin file)")
    parser.add_argument("--amp", choices=("fp16", "bf16"), default=None,
                        help="mixed precision: on CUDA fp16 (with loss scaling) or bf16; on the CPU bf16, where it "
                             "has AMX or AVX512-BF16")
    options.add_device(parser)
    options.add_threads(parser)
    options.add_low_memory(parser)
    options.add_no_winograd(parser)
    options.add_channels_last(parser)
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="data loading workers per process (default 2)")
    options.add_overrides(parser)
    options.add_quiet(parser)


allocator_setting = options.training_allocator


def run(args: argparse.Namespace) -> int:
    from ..config import parse_set_options
    from ..engine.training import TrainOptions, dist_info_from_env, train
    from ..presets import get_config

    overrides: Dict[str, Any] = dict(parse_set_options(args.overrides))
    for option, key in (("iters", "train.iters"), ("batch_size", "train.batch_size"),
                        ("val_interval", "train.val_interval"),
                        ("checkpoint_interval", "train.checkpoint_interval")):
        value = getattr(args, option)
        if value is not None:
            options.check_positive(option.replace("_", "-"), value)
            overrides[key] = value
    if "train.iters" in overrides and "train.epochs" not in overrides:
        overrides["train.epochs"] = None  # a number of iterations replaces an epoch-based schedule
    cfg = get_config(args.model, overrides)
    options.check_positive("threads", args.threads)
    options.set_torch_threads(args)
    root = Path(args.data_root)
    if not root.is_dir():
        raise KnetError(f"--data-root {root}: no such folder")
    _refuse_overwriting(args)
    train_options = TrainOptions(
        work_dir=args.work_dir, data_root=root, dataset=args.dataset, train_split=args.train_split,
        val_split=args.val_split, device=args.device, amp=args.amp,
        seed=args.seed, workers=args.workers, keep=args.keep, resume=args.resume, load_from=args.load_from,
        backbone_weights=args.backbone_weights, quiet=args.quiet, progress=False if args.quiet else None,
        low_memory=args.low_memory, cpu_winograd=args.winograd, cpu_channels_last=args.channels_last,
    )
    result = train(cfg, train_options)
    if not args.quiet and dist_info_from_env().is_main:
        summary = f"finished at iteration {result.iteration}"
        if result.last_checkpoint:
            summary += f"; last checkpoint {result.last_checkpoint}"
        if result.best_checkpoint and result.best_value is not None:
            summary += f"; best {result.best_metric} {result.best_value:.2f} ({result.best_checkpoint})"
        print(summary, flush=True)
    return 0


# What a run writes into its work directory (see :mod:`knet.engine.training`).
_WORK_DIR_FILES = ("config.json", "log.jsonl", "last_checkpoint", "iter_*.pth", "best_*_iter_*.pth")


def _refuse_overwriting(args: argparse.Namespace) -> None:
    """Before any work: the run may not write over the weights it starts from (``--resume``
    continues its own run and is the one exception)."""
    from ..utils.outputs import inputs_named_like, refuse_overwriting_inputs

    inputs = [args.load_from, args.backbone_weights]
    outputs = [("--work-dir", Path(args.work_dir) / name) for name in _WORK_DIR_FILES[:3]]
    outputs += inputs_named_like("--work-dir", args.work_dir, _WORK_DIR_FILES[3:], inputs)
    refuse_overwriting_inputs(outputs, inputs)
