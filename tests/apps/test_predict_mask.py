"""``knet predict`` with the official tiny panoptic and instance checkpoints on the golden pipeline
images: the files it writes decode (COCO panoptic PNG + JSON, pycocotools RLE) back to the official
results; options these models do not have are refused with one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import knet
from knet.cli import main
from knet.inference.results import decode_panoptic_png
from tests.conftest import golden_path

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(tmp_path, golden):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        shutil.copy(golden_path(f"det/{golden}.tiny.pipe_{i}.png"), folder / f"pipe_{i}.png")
    return folder, dict(np.load(golden_path(f"det/{golden}.tiny.pipe.npz")))


@pytest.mark.parametrize("golden, preset", [("knet-det-panoptic", "knet-r50-fpn-panoptic-tiny"),
                                            ("knet-det-panoptic-swin", "knet-swin-l-fpn-panoptic-ms3x-tiny")])
def test_panoptic_outputs_decode_to_the_official_results(tmp_path, capsys, golden, preset):
    folder, ref = _inputs(tmp_path, golden)
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--out-dir", str(out), "--model", preset,
                 "--checkpoint", str(golden_path(f"det/{golden}.tiny.pth")), "--device", "cpu",
                 "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    assert "COCO panoptic PNGs" in capsys.readouterr().out
    names = knet.get_config(preset).class_names
    for i in range(2):
        ids = decode_panoptic_png(np.asarray(Image.open(out / f"pipe_{i}.png").convert("RGB")))
        info = json.loads((out / f"pipe_{i}.json").read_text())
        assert info["file_name"] == f"pipe_{i}.png"
        segments = info["segments_info"]
        assert sorted(np.unique(ids[ids > 0]).tolist()) == sorted(s["id"] for s in segments)
        # knet numbers from 1 in the official (score) order; the official map is label + 1000 * (id - 1).
        assert [s["id"] - 1 for s in segments] == ref[f"pipe_seg_ids_{i}"].tolist()
        assert [s["label"] for s in segments] == ref[f"pipe_seg_labels_{i}"].tolist()
        assert [s["name"] for s in segments] == [names[label] for label in ref[f"pipe_seg_labels_{i}"]]
        assert np.abs(np.array([s["score"] for s in segments]) - ref[f"pipe_seg_scores_{i}"]).max() <= 1e-4
        label_of = {s["id"]: s["label"] for s in segments}
        official = np.where(ids > 0, np.vectorize(lambda v: label_of.get(v, 0))(ids) + 1000 * (ids - 1), 133)
        assert (official != ref[f"pipe_pan_{i}"]).mean() <= 0.005
        for s in segments:
            assert s["area"] == int((ids == s["id"]).sum()) and s["isthing"] == (s["label"] < 80)
        assert np.asarray(Image.open(out / f"pipe_{i}_overlay.png")).shape == ref[f"pipe_img_{i}"].shape


def test_instance_outputs_decode_to_the_official_results(tmp_path, capsys):
    folder, ref = _inputs(tmp_path, "knet-det-instance")
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--out-dir", str(out), "--model", "knet-r50-fpn-instance-tiny",
                 "--checkpoint", str(golden_path("det/knet-det-instance.tiny.pth")), "--device", "cpu",
                 "--score-thr", "0"])
    assert code == 0, capsys.readouterr().err
    category_ids = knet.get_config("knet-r50-fpn-instance-tiny").category_ids
    for i in range(2):
        assert not (out / f"pipe_{i}.png").exists()  # instance models write no label map
        entries = json.loads((out / f"pipe_{i}.json").read_text())
        assert [e["label"] for e in entries] == ref[f"pipe_ins_labels_{i}"].tolist()
        assert [e["category_id"] for e in entries] == [category_ids[label] for label in ref[f"pipe_ins_labels_{i}"]]
        assert np.abs(np.array([e["score"] for e in entries]) - ref[f"pipe_ins_scores_{i}"]).max() <= 1e-4
        masks = np.stack([mask_utils.decode(e["segmentation"]).astype(bool) for e in entries])
        assert (masks != ref[f"pipe_ins_masks_{i}"]).mean(axis=(1, 2)).max() <= 0.005
        assert (out / f"pipe_{i}_overlay.png").is_file()
    # The default threshold (0.3) keeps only the confident instances.
    assert main(["predict", str(folder / "pipe_0.png"), "--out-dir", str(tmp_path / "thr"), "--model",
                 "knet-r50-fpn-instance-tiny", "--checkpoint", str(golden_path("det/knet-det-instance.tiny.pth")),
                 "--device", "cpu", "--score-thr", "0.75"]) == 0
    kept = json.loads((tmp_path / "thr" / "pipe_0.json").read_text())
    assert [e["score"] >= 0.75 for e in kept] == [True] * len(kept) and len(kept) < 10


@pytest.mark.parametrize("extra, message", [
    (["--tta"], "run on whole images"),
    (["--mode", "slide"], "run on whole images"),
    (["--save-probs"], "--save-probs: a panoptic model has no per-class probabilities"),
    (["--score-thr", "1.5"], "--score-thr must be between 0 and 1"),
])
def test_options_these_models_do_not_have_are_refused(tmp_path, capsys, extra, message):
    folder, _ = _inputs(tmp_path, "knet-det-panoptic")
    code = main(["predict", str(folder), "--out-dir", str(tmp_path / "out"), "--model", "knet-r50-fpn-panoptic-tiny",
                 "--checkpoint", str(golden_path("det/knet-det-panoptic.tiny.pth")), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "out").glob("*.json"))


def test_segmenter_returns_segments_and_the_huggingface_dict():
    segmenter = knet.Segmenter("knet-r50-fpn-panoptic-tiny", checkpoint=golden_path("det/knet-det-panoptic.tiny.pth"),
                               device="cpu")
    result = segmenter(str(golden_path("det/knet-det-panoptic.tiny.pipe_0.png")))
    assert result.segment_map.shape == (75, 110) and result.segments
    hf = result.to_huggingface()
    assert hf["segmentation"].dtype == np.int32
    assert [s["id"] for s in hf["segments_info"]] == [s.id for s in result.segments]
    assert {s["label_id"] for s in hf["segments_info"]} == {s.label for s in result.segments}
    assert "panoptic" in repr(segmenter) and result.overlay().shape == (75, 110, 3)
