"""``knet config NAME``: print a preset's config (JSON), with ``--set`` overrides applied."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="preset name (see `knet models`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set num_classes=5 --set train.lr=1e-3")


def run(args: argparse.Namespace) -> int:
    from ..config import parse_set_options
    from ..presets import get_config

    print(get_config(args.name, parse_set_options(args.overrides)).to_json())
    return 0
