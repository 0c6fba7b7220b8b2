"""The ``knet`` command. Each verb lives in its own module under :mod:`knet.apps` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their verb runs,
so ``knet --version`` and ``knet --help`` stay instant."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__
from .errors import KnetError, cli_message

# verb -> (module under knet.apps, one-line help)
VERBS = {
    "models": ("models", "list the presets (rows of the results table and their -tiny twins)"),
    "config": ("show_config", "print the config of a preset, with --set overrides applied"),
    "convert": ("convert", "convert a reference .pth or a knet training checkpoint into a native directory "
                           "(model.safetensors + config.json)"),
    "test": ("test", "evaluate a checkpoint on a dataset: aAcc, mIoU, mAcc and per-class IoU/Acc (semantic), "
                     "PQ, SQ, RQ (panoptic), COCO mask AP (instance)"),
    "train": ("train", "train a model (single process, or torchrun for many GPUs/machines)"),
    "plot-log": ("plot_log", "draw loss and mIoU curves from a training log.jsonl"),
    "predict": ("predict", "segment images: label maps, panoptic segments or instances, colour overlays"),
    "demo": ("demo", "train, evaluate and run a tiny K-Net on generated scenes (nothing to download)"),
    "benchmark": ("benchmark", "measure the speed and memory of a model: inference, or training steps (--train)"),
    "export": ("export", "write a model as an ONNX file (run it with knet predict --checkpoint FILE.onnx)"),
    "serve": ("serve", "a web page and an HTTP API that segment images (needs: pip install \"knet-seg[serve]\")"),
}


def build_parser(verb: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only the module of ``verb`` (the one being run) is imported for its options."""
    parser = argparse.ArgumentParser(prog="knet", description="K-Net semantic, panoptic and instance segmentation")
    parser.add_argument("--version", action="version", version=f"knet {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name, _verb=name)
        if name == verb:
            _load(module_name).add_arguments(p)
    return parser


def _verb_parser(parser: argparse.ArgumentParser, verb: Optional[str]) -> Optional[argparse.ArgumentParser]:
    """The subparser of ``verb`` inside ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(verb)
    return None


def _load(module_name: str):
    return importlib.import_module(f"knet.apps.{module_name}")


def _torch_threads() -> Optional[int]:
    """Torch's CPU thread count when the caller has imported torch (None otherwise: the ONNX
    paths run without it)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _apply_allocator(module, args: argparse.Namespace) -> None:
    """A batch verb's allocator setting (its ``allocator_setting(args)``), unless
    ``KNET_ALLOCATOR=default``: see :mod:`knet.utils.memory`."""
    choose = getattr(module, "allocator_setting", None)
    setting = choose(args) if choose is not None else None
    if setting is not None:
        from .utils.memory import apply_cli_allocator

        apply_cli_allocator(setting)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one verb; returns its exit code. Called in a process that already uses torch, it leaves
    torch's thread count as it found it (``--threads`` applies to the verb only)."""
    threads = _torch_threads()
    try:
        return _run(argv)
    finally:
        if threads is not None and _torch_threads() != threads:
            sys.modules["torch"].set_num_threads(threads)


def _run(argv: Optional[List[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if a in VERBS), None))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the verb's usage, not the top level's: the options named are the verb's
        (_verb_parser(parser, getattr(args, "verb", None)) or parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        module = _load(args._module)
        _apply_allocator(module, args)
        return int(module.run(args) or 0)
    except KnetError as err:
        print(f"knet {args._verb}: error: {cli_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"knet {args._verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
