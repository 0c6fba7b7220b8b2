"""``knet config NAME``: print a preset's config (JSON), with ``--set`` overrides applied."""
from __future__ import annotations

import argparse

from . import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="preset name (see `knet models`)")
    options.add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import parse_set_options
    from ..presets import get_config

    print(get_config(args.name, parse_set_options(args.overrides)).to_json())
    return 0
