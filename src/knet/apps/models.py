"""``knet models``: the presets, with their published results and reference checkpoints."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..presets import REFERENCE_CHECKPOINTS, RESULTS_TABLE, get_config, list_presets

    rows = []
    for name in list_presets():
        cfg = get_config(name)
        row_name = name[: -len("-tiny")] if name.endswith("-tiny") else name
        published = RESULTS_TABLE[row_name] if name == row_name else {}
        rows.append({
            "name": name,
            "backbone": cfg.backbone.kind,
            "head": cfg.decode_head.kind,
            "crop": "x".join(map(str, cfg.data.crop_size)),
            "params_m": published.get("params_m"),
            "mIoU": published.get("mIoU"),
            "mIoU_ms_flip": published.get("mIoU_ms_flip"),
            "checkpoint": REFERENCE_CHECKPOINTS.get(name),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<30} {'backbone':<11} {'head':<5} {'crop':<8} {'params':>8} {'mIoU':>6} {'ms+flip':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        params = f"{fmt(row['params_m'], '.2f')}M" if row["params_m"] else "-"
        print(f"{row['name']:<30} {row['backbone']:<11} {row['head']:<5} {row['crop']:<8} {params:>8} "
              f"{fmt(row['mIoU'], '.2f'):>6} {fmt(row['mIoU_ms_flip'], '.2f'):>8}")
    print("\nmIoU: published ADE20K val results of the reference checkpoints (see README for download addresses).")
    return 0
