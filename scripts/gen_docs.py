"""The generated pages of the documentation site: the CLI reference and the benchmarks page.

    python scripts/gen_docs.py            # (re)write docs/cli.md and docs/benchmarks.md
    python scripts/gen_docs.py --check    # exit 1 when a page differs from what it would be

``docs/cli.md`` is every verb's ``--help`` as argparse prints it (at 100 columns);
``docs/benchmarks.md`` shows one table per file of ``benchmarks/results/``. The tests run
``--check``'s comparison, so a page cannot drift from the parsers or the data.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGES = {"cli.md": "cli_reference", "benchmarks.md": "benchmarks_page"}
HELP_COLUMNS = 100


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help at ``$COLUMNS``; fixed here so the page does not depend on the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def cli_reference() -> str:
    from knet.cli import VERBS, build_parser

    lines = ["# Command-line reference", "",
             "Every verb's `--help`, generated from its parser (`python scripts/gen_docs.py`).", ""]
    with _columns(HELP_COLUMNS):
        top = build_parser()
        lines += ["## knet", "", "```text", top.format_help().rstrip(), "```", ""]
        for verb in VERBS:
            parser = build_parser(verb)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
            lines += [f"## knet {verb}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _or_dash(value: Optional[float], spec: str) -> str:
    """``value`` formatted with ``spec``, or "-" where it was not measured (None)."""
    return "-" if value is None else format(value, spec)


def _spread(values: List[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _machine(record: Dict[str, Any]) -> str:
    m = record["machine"]
    parts = [m["cpu"], f"flags: {', '.join(m['cpu_flags']) or 'no AVX-512 / VNNI / AMX'}"]
    if "threads" in m:
        parts.append(f"{m['threads']} threads")
    parts += [f"Python {m['python']}", f"torch {m['torch']}", f"knet {m['knet']}"]
    if m.get("onnxruntime"):
        parts.append(f"ONNX Runtime {m['onnxruntime']}")
    return "Machine: " + "; ".join(parts) + "."


WEIGHTS = {"realistic": "the reference's initialisation made like a trained network's (`benchmarks/realistic.py`; "
                        "panoptic/instance: `det_bench.py export`'s own recipe)",
           "init": "the reference's random initialisation"}


def _side_by_side(record: Dict[str, Any]) -> List[str]:
    s = record["settings"]
    lines = [f"Weights: {WEIGHTS[s.get('weights', 'init')]}, the same file on both sides. Batch 1; semantic rows: "
             f"the forward at {s['size']}x{s['size']}; panoptic/instance rows: end to end on a 640x480 photo (the "
             "official `inference_detector` against `Segmenter`). fp32 unless the column says otherwise. Medians "
             f"over {s['rounds']} alternating rounds of {s['repeats']} runs, (min-max) over the rounds; the ratio "
             "is the reference's median over knet's.", ""]
    rows = record["inference"]
    if rows:
        columns: List[str] = []
        for row in rows:
            columns += [c for c in row["per_round"] if c not in columns]
        lines += ["| model | " + " | ".join(f"{c} (s)" for c in columns) + " |", "|---|" + "---|" * len(columns)]
        for row in rows:
            cells = []
            for c in columns:
                if c not in row["per_round"]:
                    cells.append("-")
                    continue
                cell = _spread(row["per_round"][c])
                if c != "reference" and "reference" in row["per_round"]:
                    cell += f", {row['reference'] / row[c]:.2f}x"
                cells.append(cell)
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
        diffs = [(row["model"], row["diffs"]) for row in rows if row.get("diffs")]
        if diffs:
            lines += ["", f"Logits against the reference's, x max |logit|, median / max over {s['inputs']} inputs:", "",
                      "| model | " + " | ".join(diffs[0][1]) + " |", "|---|" + "---|" * len(diffs[0][1])]
            for model, d in diffs:
                lines.append(f"| {model} | " + " | ".join(f"{statistics.median(v):.1e} / {max(v):.1e}"
                                                          for v in d.values()) + " |")
    for row in record.get("training") or []:
        if row is record["training"][0]:
            lines += ["", "Training step, batch 2 (semantic: at the input size; panoptic/instance: 1088x800, each "
                      "side its own synthetic targets), with the process's peak resident memory:", "",
                      "| model | run | step (s) | peak RSS (GB) |", "|---|---|---|---|"]
        reference = row["memory"].get("reference")
        for kind, peak in row["memory"].items():
            ratios = (f", {row['reference'] / row[kind]:.2f}x" if reference and kind != "reference" else "")
            memory = (f", {peak / reference:.2f}x" if reference and kind != "reference" else "")
            lines.append(f"| {row['model']} | {kind} | {_spread(row['per_round'][kind])}{ratios} | "
                         f"{peak / 1024:.1f}{memory} |")
    return lines


def _amp_training_accuracy(record: Dict[str, Any]) -> List[str]:
    lines = ["Each demo recipe (`knet demo`: the preset, its iterations, seed 0, its generated scenes) "
             "trained on the CPU in fp32 and with `--amp bf16`, then evaluated in fp32 on the held-out "
             "scenes: the task's metric (percent) and the training's wall time. These tiny models' "
             "scores move by several points with any change of rounding (the thread count included), "
             "so the two columns are two draws, not a paired difference.", "",
             "| task | metric | iterations | fp32 | bf16 | fp32 training (s) | bf16 training (s) |",
             "|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        values = [_or_dash(row["values"][k], ".2f") for k in ("fp32", "bf16")]
        seconds = [_or_dash(row["train_seconds"][k], ".0f") for k in ("fp32", "bf16")]
        lines.append(f"| {row['task']} | {row['metric']} | {row['iters']} | " + " | ".join(values + seconds) + " |")
    return lines


def _precision_accuracy(record: Dict[str, Any]) -> List[str]:
    lines = ["The demo models (`knet demo`, trained on generated scenes) on their held-out scenes: the task's "
             "metric in each precision (percent) and the agreement with fp32 (semantic: pixels with the same "
             "label; panoptic: pixels with the same class; instance: fp32's instances scoring at least 0.3 found "
             "with the same class at mask IoU 0.5). bf16: `--precision bf16`; int8: `knet export --quantize int8` "
             f"calibrated on {record['settings']['calibration_scenes']} training scenes, in ONNX Runtime.", "",
             "| task | metric | fp32 | bf16 | int8 | bf16 agreement | int8 agreement |",
             "|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        values = [_or_dash(row["values"].get(k), ".2f") for k in ("fp32", "bf16", "int8")]
        agree = [(f"{100 * row['agreement_with_fp32'][k]:.2f}%" if k in row["agreement_with_fp32"] else "-")
                 for k in ("bf16", "int8")]
        lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(values + agree) + " |")
    return lines


def _serve_memory(record: Dict[str, Any]) -> List[str]:
    lines = [f"`knet serve` with {record['model']}, {record['requests']} requests of "
             f"{record['sizes_px'][0]}-{record['sizes_px'][1]} px one after another; resident memory (MB).", "",
             "| setting | idle | after 20 | after the last | growth after the first 20 |", "|---|---|---|---|---|"]
    for setting, result in record["results"].items():
        series = result["rss_mb_idle_then_every_20"]
        lines.append(f"| {setting} | {series[0]:.0f} | {series[1]:.0f} | {series[-1]:.0f} | "
                     f"{result['growth_after_first_20_mb']:+.0f} |")
    return lines


def _video_throughput(record: Dict[str, Any]) -> List[str]:
    s = record["settings"]
    lines = [f"`knet predict` on a {s['size'][0]}x{s['size'][1]} clip of {s['frames']} frames (random weights), "
             f"medians over {s['rounds']} alternating rounds: the video path (decoding and encoding in background "
             "threads, overlays drawn) against the same segmenter streaming the decoded frames, and "
             "`knet benchmark`'s forward alone at the size the frames are resized to.", "",
             "| model | video (frames/s) | model through the pipeline (frames/s) | overhead "
             "| forward alone (images/s) |",
             "|---|---|---|---|---|"]
    for row in record["rows"]:
        lines.append(f"| {row['model']} | {row['video_fps']:.2f} | {row['model_fps']:.2f} | "
                     f"{100 * row['overhead']:+.1f}% | {row['benchmark_images_per_s']:.2f} at "
                     f"{row['benchmark_size'][0]}x{row['benchmark_size'][1]} |")
    return lines


def _denormals(record: Dict[str, Any]) -> List[str]:
    s = record["settings"]
    lines = [f"knet's predict path at {s['size']}x{s['size']}, batch 1, on weights like a trained model's "
             "(`benchmarks/realistic.py`), with flush-to-zero on torch's threads during the forward (the "
             f"default) and without; medians over {s['rounds']} alternating rounds.", "",
             "| model | weights | flush-to-zero (s) | without (s) | speed-up | outputs differ (x max) |",
             "|---|---|---|---|---|---|"]
    for row in record["rows"]:
        weights = "the reference's initialisation" if row["weights"] == "file" else "knet's initialisation"
        lines.append(f"| {row['model']} | {weights} | {_spread(row['per_round']['flush'])} | "
                     f"{_spread(row['per_round']['plain'])} | {row['speedup']:.2f}x | "
                     f"{row['output_difference_x_max']:.1e} |")
    return lines


def _time_budget(record: Dict[str, Any]) -> List[str]:
    s = record["settings"]
    width, height = s["input_size"]
    lines = [f"Where knet's time goes at the 1x recipe's {width}x{height} input (weights: {s['weights']}; "
             "`det_bench.py export` writes realistic ones), under "
             "torch's profiler: the self time of the operators that are matrix products (direct convolutions and "
             "their backward, `bmm`, `mm`, `addmm`) and the rest of the wall time. Arithmetic counted by torch's "
             "`FlopCounterMode`: the reference's (every convolution direct) and knet's (wide 3x3 convolutions as "
             f"Winograd F(4x4, 3x3)). The rate of this machine's fp32 matrix products was taken before each row "
             "(`torch.mm`, 2048x2048); the last column is each side's arithmetic alone at that rate.", "",
             "| model | work | knet (s) | matrix products (s, GFLOP/s) | the rest (s) | largest of the rest (s) "
             "| arithmetic: reference / knet (GFLOP) | `torch.mm` (GFLOP/s) | at that rate: reference / knet (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        others = ", ".join(f"`{name.split('::')[-1]}` {seconds:.2f}"
                           for name, seconds in list(row["top_others_s"].items())[:4])
        lines.append(f"| {row['model']} | {row['work']} | {row['wall_s']:.2f} | {row['matrix_s']:.2f}, "
                     f"{row['matrix_gflops']:.0f} | {row['wall_s'] - row['matrix_s']:.2f} | {others} | "
                     f"{row['reference_gflop']:.0f} / {row['knet_gflop']:.0f} | {row['matrix_product_gflops']:.0f} | "
                     f"{row['reference_floor_s']:.2f} / {row['knet_floor_s']:.2f} |")
    return lines


TABLES = {"side_by_side": _side_by_side, "time_budget": _time_budget, "serve_memory": _serve_memory,
          "video_throughput": _video_throughput,
          "denormals": _denormals, "precision_accuracy": _precision_accuracy,
          "amp_training_accuracy": _amp_training_accuracy}


def benchmarks_page() -> str:
    lines = ["# Benchmarks", "",
             "Each table below is one file of `benchmarks/results/`, written by the script that measured it",
             "(`benchmarks/side_by_side.py --save`, `benchmarks/serve_memory.py --save`,",
             "`benchmarks/video_throughput.py --save`, `benchmarks/denormals.py --save`,",
             "`benchmarks/precision_accuracy.py --save`, `benchmarks/amp_training_accuracy.py --save`,",
             "`benchmarks/time_budget.py --save`)",
             "and shown here by",
             "`python scripts/gen_docs.py`. Times from different machines or runs do not compare: each",
             "file's ratios come from one run, knet and the reference alternating on the same inputs.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        kind = record.get("benchmark")
        if kind not in TABLES:
            raise SystemExit(f"{path}: unknown benchmark {kind!r}; known: {', '.join(TABLES)}")
        lines += [f"## {path.stem}", "", _machine(record), ""] + TABLES[kind](record) + [""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is not current")
    args = parser.parse_args()
    stale = []
    for name, function in PAGES.items():
        path = REPO / "docs" / name
        text = globals()[function]() + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"not current: {', '.join(stale)} (run python scripts/gen_docs.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
