"""``knet convert REF.pth OUT_DIR --model NAME``: a reference checkpoint -> native directory."""
from __future__ import annotations

import argparse

from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="reference .pth (mmsegmentation), or a knet training checkpoint")
    parser.add_argument("out_dir", help="directory to write model.safetensors and config.json into")
    parser.add_argument("--model", default=None,
                        help="preset name; may be left out when the file carries its config or only one preset fits")
    options.add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model, save_pretrained
    from ..config import parse_set_options

    from pathlib import Path

    from ..utils.outputs import refuse_overwriting_inputs

    refuse_overwriting_inputs([("out_dir", Path(args.out_dir) / name) for name in ("model.safetensors", "config.json")],
                              [args.checkpoint])
    model = load_model(args.checkpoint, args.model, parse_set_options(args.overrides) or None)
    out = save_pretrained(model, args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}/model.safetensors and {out}/config.json ({model.config.name}, "
          f"{params / 1e6:.2f}M parameters, {model.num_classes} classes)")
    return 0
