"""``knet export``: write a model as an ONNX file that ONNX Runtime runs (``knet predict
--checkpoint FILE.onnx``, ``knet.load("FILE.onnx")``).

    knet export --model knet-r50-fcn --checkpoint ref.pth --format onnx --out knet-r50-fcn.onnx
    knet export --checkpoint my_model --out my_model-int8.onnx --quantize int8 --calibration photos/
    knet export --checkpoint my_model.onnx --out my_model-int8.onnx --quantize int8 --calibration photos/

The file takes normalised float32 images (N, 3, H, W) of any batch and size (multiples of 32 for
panoptic/instance models) and gives what the test pipeline reads: semantic logits (N, C, H, W), or
the last stage's class and stride-4 mask logits; knet's config travels in its metadata (see
:mod:`knet.export.onnx`). A parity check (ONNX Runtime against torch on random inputs) runs right
after the export and prints the largest differences; the file is written atomically.

``--quantize int8`` writes a statically quantized file instead (:mod:`knet.export.quantize`),
calibrated on up to ``--calibration-images`` images of the ``--calibration`` folder, and prints how
far it is from the float model on them; its source may also be a float file that ``knet export``
wrote (an ``.onnx`` ``--checkpoint``).

``--precision fp16`` writes the graph in float16 for GPUs (``--target gpu``; input and outputs stay
float32); the parity check then runs it in ONNX Runtime on the CPU without graph optimisations.

``--target`` (:mod:`knet.export.targets`: ``cpu``, the default, ``cpu-vnni`` or ``gpu``) is the
runtime the file is for and alone decides its layout, so the same command writes the same file on
every machine; a one-line note says when the target is a CPU unlike this one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..errors import KnetError
from . import options

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..export.quantize import SCHEMES
    from ..export.targets import DEFAULT_TARGET, TARGET_NAMES, TARGETS

    options.add_model(parser)
    options.add_weights(parser, required=True)
    options.add_overrides(parser)
    parser.add_argument("--format", type=str.lower, choices=FORMATS, default="onnx",
                        help="output format (default onnx)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset, 18 or newer (default 18)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the parity check (ONNX Runtime against torch on random inputs)")
    parser.add_argument("--tolerance", type=float, default=1e-2, metavar="X",
                        help="largest parity difference accepted, relative to the largest output (default 1e-2: "
                             "a wrong graph differs by the order of the outputs)")
    parser.add_argument("--target", choices=TARGET_NAMES, default=None,
                        help="the runtime the file is for, which alone decides its layout: "
                             + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())
                             + f" (default: {DEFAULT_TARGET}; with an .onnx --checkpoint, the target that file was "
                               "exported for). "
                               "Wide 3x3 convolutions are Winograd (float32) for cpu, and for cpu-vnni without "
                               "--quantize; cpu-vnni int8 quantizes every convolution; gpu has no Winograd")
    parser.add_argument("--winograd", action=argparse.BooleanOptionalAction, default=None,
                        help="override --target's layout: wide 3x3 convolutions as Winograd matrix products "
                             "(--quantize keeps them float32), or every convolution a Conv node")
    parser.add_argument("--quantize", type=str.lower, choices=SCHEMES, default=None,
                        help="int8: static quantization (QDQ) calibrated on --calibration images; its source is "
                             "the model of --checkpoint, or an .onnx --checkpoint itself (a float file of "
                             "knet export)")
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="--quantize: a folder of images like those the model will see (searched recursively)")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help="--quantize: how many of them to use (default 16, spread over the sorted file list)")
    options.add_precision(parser)  # fp32, or fp16 for --target gpu; bf16 is refused (no ONNX Runtime kernels)
    options.add_threads(parser)


def run(args: argparse.Namespace) -> int:
    options.check_positive("threads", args.threads)
    out = Path(args.out)
    if out.is_dir():
        raise KnetError(f"--out {out}: is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    if not args.tolerance > 0:
        raise KnetError(f"--tolerance must be positive, got {args.tolerance}")
    from ..export.onnx import MIN_OPSET, check_export_precision
    from ..export.targets import DEFAULT_TARGET, get_target

    if args.opset < MIN_OPSET:
        raise KnetError(f"--opset {args.opset}: the exporter writes opset {MIN_OPSET} or newer")

    calibration = _calibration(args)
    if args.precision == "fp16" and calibration is not None:
        raise KnetError("--precision fp16 and --quantize int8 are two different files: pass one of them")
    if args.precision == "fp16" and args.target is None:
        args.target = "gpu"  # the one target of a float16 file
    check_export_precision(args.precision, args.target or DEFAULT_TARGET)
    _refuse_overwriting(out, args)
    if options.checkpoint_is_onnx(args):  # the float source of --quantize; the target defaults to the file's own
        if calibration is None:
            raise KnetError(f"--checkpoint {args.checkpoint} is already an ONNX file: it is the source of --quantize "
                            "only")
        if args.overrides:
            raise KnetError("--set does not apply to an .onnx --checkpoint: its config is fixed when it is exported")
        _quantize(Path(args.checkpoint), out, calibration, args)
        return 0
    target = get_target(args.target or DEFAULT_TARGET)
    args.target = target.name
    if args.winograd is None:
        args.winograd = target.winograd(quantized=calibration is not None)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    model = options.load_weights(args)
    _note(target.name, quantized=calibration is not None)  # after the checks: an error stays one line
    print(f"knet export: {model.config.name} ({model.config.task}) -> {out}", file=sys.stderr)
    if calibration is None:
        _export(model, out, args)
        return 0
    with tempfile.TemporaryDirectory(prefix="knet-export-") as folder:
        fp32 = Path(folder) / "fp32.onnx"
        _export(model, fp32, args, temporary=True)
        _quantize(fp32, out, calibration, args)
    return 0


def _quantize(fp32: Path, out: Path, calibration, args: argparse.Namespace) -> None:
    from ..export.quantize import quantize_int8, read_calibration_images

    images = read_calibration_images(calibration)
    print(f"quantizing to int8, calibrated on {len(images)} images ...", file=sys.stderr)
    result = quantize_int8(fp32, out, images, threads=args.threads, target=args.target)
    if options.checkpoint_is_onnx(args):
        _note(result.target, quantized=True)
    print(result.summary())
    print(f"wrote {out} ({result.size_mb:.1f} MB, int8, target {result.target})")


def _export(model, out: Path, args: argparse.Namespace, temporary: bool = False) -> None:
    from ..export.onnx import export_onnx

    result = export_onnx(model, out, opset=args.opset, check=args.check, tolerance=args.tolerance,
                         winograd=args.winograd, target=args.target, precision=args.precision)
    for parity in result.parity:
        print(f"parity check, {parity.summary()}")
    # the float file of --quantize is a temporary step: its path means nothing to the user
    what = "exported the float32 model" if temporary else f"wrote {out}"
    print(f"{what} ({result.size_mb:.1f} MB, {result.precision}, opset {result.opset}, target {result.target}, "
          f"{result.winograd} Winograd 3x3 convolutions, exported in {result.seconds:.1f} s)")


def _note(target: str, quantized: bool) -> None:
    """The one-line note when CPU target ``target`` is not this CPU (the file does not change)."""
    from ..export.targets import target_note

    note = target_note(target, quantized)
    if note:
        print(note, file=sys.stderr)


def _calibration(args: argparse.Namespace):
    """The calibration image files of ``--quantize``, or None without it (checked before the slow
    export starts)."""
    if args.quantize is None:
        for name in ("calibration", "calibration_images"):
            if getattr(args, name) is not None:
                raise KnetError(f"--{name.replace('_', '-')} applies to --quantize only")
        return None
    from ..export.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_files

    if args.calibration is None:
        raise KnetError("--quantize int8 needs --calibration DIR, a folder of images to calibrate on")
    options.check_positive("calibration-images", args.calibration_images)
    return calibration_files(args.calibration, args.calibration_images or DEFAULT_CALIBRATION_IMAGES)


def _refuse_overwriting(out: Path, args: argparse.Namespace) -> None:
    """Before any work: ``--out`` may not replace the weights, the source file or a calibration image."""
    from ..utils.outputs import refuse_overwriting_inputs

    images = sorted(p for p in Path(args.calibration).rglob("*") if p.is_file()) if args.calibration else []
    refuse_overwriting_inputs([("--out", out)], [args.checkpoint, *images])
