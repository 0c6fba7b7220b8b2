"""``knet demo``: a shortened run writes every output and prints where they are; the full run
(about two minutes on two CPU cores) reaches the expected mIoU and is marked slow."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from knet.apps.demo import EXPECTED_MIOU, NUM_CLASSES
from knet.cli import main

OUTPUTS = ["report.md", "metrics.json", "curves.png", "gallery.png", "model/model.safetensors",
           "model/config.json", "train/log.jsonl", "data/classes.txt"]


def _check_outputs(out: Path, num_shown: int) -> dict:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"background", "stripes", "checkers", "dots"}
    assert metrics["num_classes"] == NUM_CLASSES
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    labels = sorted(p for p in (out / "predictions").glob("*.png") if not p.name.endswith("_overlay.png"))
    assert len(overlays) == len(labels) == num_shown
    label = cv2.imread(str(labels[0]), cv2.IMREAD_UNCHANGED)
    assert label.ndim == 2 and label.max() < NUM_CLASSES
    assert cv2.imread(str(out / "curves.png")) is not None
    report = (out / "report.md").read_text()
    assert f"mIoU {metrics['mIoU']:.2f}%" in report
    for name in metrics["per_class"]:
        assert f"| {name} |" in report
    return metrics


def test_short_demo_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out-dir", str(out), "--iters", "4", "--num-train", "4", "--num-val", "3",
                 "--image-size", "64", "--quiet"])
    assert code == 0
    metrics = _check_outputs(out, num_shown=3)
    assert metrics["iterations"] == 4
    printed = capsys.readouterr().out
    assert "demo mIoU" in printed
    for name in ("report.md", "metrics.json", "curves.png", "predictions", "model"):
        assert str(out / name) in printed


def test_demo_runs_again_in_the_same_folder(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out-dir", str(out), "--iters", "2", "--num-train", "5", "--num-val", "3",
            "--image-size", "48", "--quiet"]
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    argv[argv.index("--num-train") + 1] = "3"
    assert main(argv) == 0  # a fresh run, not refused over the earlier run's checkpoints
    assert len(list((out / "data" / "images" / "train").glob("*.png"))) == 3
    assert (out / "notes.txt").read_text() == "mine"


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path / "d"), "--iters", "0"]) == 2
    assert "--iters" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo_reaches_the_expected_miou(tmp_path):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out-dir", str(out), "--quiet"]) == 0
    metrics = _check_outputs(out, num_shown=6)
    assert metrics["mIoU"] >= EXPECTED_MIOU
