"""``knet benchmark``: inference speed, latency, peak memory and multiply-accumulates of a model.

It times the model forward of the predict path (``model.inference`` in whole or slide mode on a
normalised batch of ``width x height`` images) after warm-up, one synchronised call per iteration,
and counts the multiply-accumulates of one forward with :class:`torch.utils.flop_counter.FlopCounterMode`
(MACs = FLOPs / 2; convolutions and matrix products, which are all but a sliver of the work).

    knet benchmark --model knet-r50-fcn --size 512 --iters 20 --json
    knet benchmark --checkpoint knet-r50-fcn.onnx --size 512 --threads 2    # the exported file, ONNX Runtime

With an ``.onnx`` ``--checkpoint`` the timed call is the ONNX Runtime session of a file written by ``knet export``
(through :class:`knet.inference.onnx_runner.OnnxRunner`, ``--threads`` its intra-op threads); its
multiply-accumulates are not counted (``gmacs`` is null).

``--json`` prints one object on stdout::

    {"model", "device", "threads", "batch_size", "size", "mode", "iters", "images_per_s",
     "latency_ms": {"p50", "p90", "p99"}, "peak_memory_mb", "gmacs"}

``--train`` times full training steps instead (:func:`~knet.engine.benchmark.benchmark_train`, like
:func:`~knet.engine.benchmark.benchmark` a library function): the task's batch on the
device, the forward pass with every stage, the task's losses, the backward pass and the clipped
AdamW step of the preset's recipe -- the trainer's own pieces (:mod:`knet.engine.training`,
:mod:`knet.engine.optim`) -- on a synthetic batch (random normalised images; semantic models:
random labels over their classes; panoptic/instance models: random non-overlapping rectangles
as things over bands of stuff). Defaults: batch 2, 10 timed steps after 2 warm-up steps::

    knet benchmark --model knet-r50-fcn --train --threads 2 --json

Its ``--json`` object has the same keys but for ``latency_ms`` and ``gmacs``, which it leaves
out, and ``step_ms`` (percentiles of the time of one step of the batch) with ``mode: "train"``::

    {"model", "device", "threads", "batch_size", "size", "mode": "train", "iters", "images_per_s",
     "step_ms": {"p50", "p90", "p99"}, "peak_memory_mb"}
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine.benchmark import INFERENCE_DEFAULTS, TRAIN_DEFAULTS, benchmark, benchmark_train
from ..errors import KnetError
from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Without --checkpoint, the --model preset runs with random weights."
    options.add_model(parser)
    options.add_weights(parser, required=False)
    options.add_overrides(parser)
    parser.add_argument("--size", type=options.size_pair, default=None, metavar="N|W,H",
                        help="input size in pixels (default: the preset's training crop, 512 for ADE20K; "
                             "panoptic/instance: the test scale padded to 32, 1344,800)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="images per forward (default 1; with --train 2)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None,
                        help="whole-image or sliding-window forward (default whole; not with --train)")
    parser.add_argument("--train", action="store_true",
                        help="time training steps (forward, losses, backward, clipped AdamW step) on a "
                             "synthetic batch instead of inference")
    options.add_low_memory(parser)
    options.add_device(parser)
    options.add_threads(parser)
    options.add_compile(parser)
    options.add_precision(parser)
    options.add_quiet(parser)
    parser.add_argument("--iters", type=int, default=None, metavar="N",
                        help=f"timed iterations (default {INFERENCE_DEFAULTS['iters']}; with --train "
                             f"{TRAIN_DEFAULTS['iters']})")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help=f"untimed warm-up iterations (default {INFERENCE_DEFAULTS['warmup']}; with --train "
                             f"{TRAIN_DEFAULTS['warmup']})")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _load(args: argparse.Namespace) -> Any:
    if args.checkpoint:
        return options.load_weights(args)
    if not args.model:
        raise KnetError("give --model NAME (see `knet models`), or a --checkpoint that carries its config")
    from ..config import parse_set_options
    from ..models.segmentor import build_model

    return build_model(args.model, parse_set_options(args.overrides) or None)


def allocator_setting(args: argparse.Namespace):
    return (options.training_allocator if args.train else options.inference_allocator)(args)


def run(args: argparse.Namespace) -> int:
    if args.train and options.checkpoint_is_onnx(args):
        raise KnetError("--train times a PyTorch model's training step, which an .onnx --checkpoint cannot take")
    options.refuse_torch_options_for_onnx(args)
    if args.train and args.mode is not None:
        raise KnetError("--mode chooses the inference forward; --train times training steps on whole crops")
    if args.train and args.compile:
        raise KnetError("--compile applies to the inference forward, not to --train")
    if args.low_memory and not args.train:
        raise KnetError("--low-memory is a training option: add --train")
    defaults = TRAIN_DEFAULTS if args.train else INFERENCE_DEFAULTS
    counts = {key: defaults[key] if getattr(args, key) is None else getattr(args, key) for key in defaults}
    model = _load(args)
    size = args.size if args.size is None or args.size[0] != args.size[1] else args.size[0]
    name = args.model or model.config.name
    if args.train:
        result: Any = benchmark_train(model, size=size, device=args.device, threads=args.threads, name=name,
                                      low_memory=args.low_memory, precision=args.precision, **counts)
    else:
        result = benchmark(model, size=size, device=args.device, threads=args.threads, mode=args.mode or "whole",
                           name=name, compile=args.compile, precision=args.precision, **counts)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.summary())
    return 0
