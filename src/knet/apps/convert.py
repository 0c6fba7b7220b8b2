"""``knet convert --checkpoint REF.pth --out-dir DIR [--model NAME]``: a checkpoint -> native directory."""
from __future__ import annotations

import argparse

from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_weights(parser, required=True)
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="directory to write model.safetensors and config.json into")
    options.add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import save_pretrained
    from ..errors import KnetError
    from ..utils.outputs import refuse_overwriting_inputs

    if options.checkpoint_is_onnx(args):
        raise KnetError(f"--checkpoint {args.checkpoint}: an ONNX file cannot be converted back into a native "
                        "directory (it holds a graph; knet convert reads .pth files and native directories)")
    refuse_overwriting_inputs([("--out-dir", Path(args.out_dir) / name)
                               for name in ("model.safetensors", "config.json")],
                              [args.checkpoint])
    model = options.load_weights(args)
    out = save_pretrained(model, args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}/model.safetensors and {out}/config.json ({model.config.name}, "
          f"{params / 1e6:.2f}M parameters, {model.num_classes} classes)")
    return 0
