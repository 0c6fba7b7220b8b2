"""``knet models``: the presets, with their task, published results and reference checkpoints."""
from __future__ import annotations

import argparse
import json

# The published metric of a row, by the key its results carry.
RESULT_KEYS = ("mIoU", "PQ", "AP")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..presets import REFERENCE_CHECKPOINTS, RESULTS_TABLE, get_config, list_presets

    rows = []
    for name in list_presets():
        cfg = get_config(name)
        row_name = name[: -len("-tiny")] if name.endswith("-tiny") else name
        published = RESULTS_TABLE[row_name] if name == row_name else {}
        decode_head = getattr(cfg, "decode_head", None)
        # Semantic rows are trained on crops; the mask models see whole images fitted to a test scale.
        size = getattr(cfg.data, "crop_size", None) or cfg.data.test_scale
        rows.append({
            "name": name,
            "task": cfg.task,
            "backbone": cfg.backbone.kind,
            "head": decode_head.kind if decode_head is not None else "kernel",
            "input": "x".join(map(str, size)),
            "params_m": published.get("params_m"),
            **{key: published.get(key) for key in RESULT_KEYS},
            "mIoU_ms_flip": published.get("mIoU_ms_flip"),
            "PQ_test_dev": published.get("PQ_test_dev"),
            "checkpoint": REFERENCE_CHECKPOINTS.get(name),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (f"{'name':<36} {'task':<9} {'backbone':<11} {'head':<6} {'input':<9} {'params':>8} "
              f"{'result':>10} {'ms+flip':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        params = f"{fmt(row['params_m'], '.2f')}M" if row["params_m"] else "-"
        result = next((f"{key} {row[key]:.1f}" for key in RESULT_KEYS if row[key] is not None), "-")
        print(f"{row['name']:<36} {row['task']:<9} {row['backbone']:<11} {row['head']:<6} {row['input']:<9} "
              f"{params:>8} {result:>10} {fmt(row['mIoU_ms_flip'], '.2f'):>8}")
    print("\nmIoU: ADE20K val; PQ: COCO panoptic val; AP: COCO instance mask AP (val) -- the published results "
          "of the reference checkpoints (see README for download addresses).")
    return 0
