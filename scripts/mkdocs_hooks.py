"""MkDocs hooks: the model zoo's download tables, from ``src/knet/data/checkpoints.json``.

The addresses hold dates and hashes, so they live in the package's data file (which
``knet.presets`` reads too) and are filled into the page where it says ``<!-- checkpoints -->`` or
``<!-- backbone-weights -->``.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "knet" / "data" / "checkpoints.json"


def _tables() -> dict:
    data = json.loads(DATA.read_text())
    checkpoints = ["| preset | checkpoint |", "|---|---|"]
    checkpoints += [f"| `{name}` | [{url.rsplit('/', 1)[1]}]({url}) |" for name, url in data["checkpoints"].items()]
    backbones = ["| backbone | ImageNet weights |", "|---|---|"]
    backbones += [f"| {name} | [{url.rsplit('/', 1)[1]}]({url}) |" for name, url in data["backbones"].items()]
    return {"<!-- checkpoints -->": "\n".join(checkpoints), "<!-- backbone-weights -->": "\n".join(backbones)}


def on_page_markdown(markdown: str, **kwargs) -> str:
    for marker, table in _tables().items():
        markdown = markdown.replace(marker, table)
    return markdown
