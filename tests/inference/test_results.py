"""The Segmenter's panoptic and instance results: the COCO panoptic PNG/JSON and the RLE results decode back to the
segments, the Hugging Face dict, overlays."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from knet.inference.results import ClassMeta, InstanceResult, PanopticResult, decode_panoptic_png, encode_panoptic_png
from knet.postprocess import InstancePrediction, PanopticPrediction, PanopticSegment

META = ClassMeta(names=["person", "car", "sky"], category_ids=[1, 3, 187], isthing=[True, True, False],
                 palette=[(220, 20, 60), (0, 0, 142), (70, 130, 180)])


def _image():
    return np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def _panoptic():
    segment_map = np.zeros((40, 60), np.int32)
    segment_map[:20] = 1                  # sky (stuff)
    segment_map[25:35, 5:20] = 2          # a person
    segment_map[25:35, 30:50] = 3         # a car; the rest is void
    segments = [PanopticSegment(1, 2, 0.9, 0, 11, False), PanopticSegment(2, 0, 0.8, 0, 3, True),
                PanopticSegment(3, 1, 0.7, 0, 5, True)]
    return PanopticResult.from_prediction(_image(), PanopticPrediction(torch.from_numpy(segment_map), segments),
                                          META, "x.png")


def test_panoptic_png_json_decode_back(tmp_path):
    result = _panoptic()
    paths = result.write(tmp_path / "x")
    assert [p.name for p in paths] == ["x.png", "x.json", "x_overlay.png"]
    ids = decode_panoptic_png(np.asarray(Image.open(tmp_path / "x.png").convert("RGB")))
    np.testing.assert_array_equal(ids, result.segment_map)
    info = json.loads((tmp_path / "x.json").read_text())
    assert info["file_name"] == "x.png"
    by_id = {s["id"]: s for s in info["segments_info"]}
    assert by_id[1]["category_id"] == 187 and by_id[1]["isthing"] is False and by_id[1]["name"] == "sky"
    assert by_id[2]["area"] == 150 and by_id[2]["bbox"] == [5, 25, 15, 10] and by_id[3]["category_id"] == 3
    assert (ids == 0).sum() == 40 * 60 - 1200 - 150 - 200
    overlay = np.asarray(Image.open(tmp_path / "x_overlay.png"))
    assert overlay.shape == (40, 60, 3) and not np.array_equal(overlay, result.image)


def test_ids_beyond_one_byte_round_trip():
    ids = np.array([[0, 1, 255, 256, 70000]])
    np.testing.assert_array_equal(decode_panoptic_png(encode_panoptic_png(ids)), ids)


def test_huggingface_dict():
    hf = _panoptic().to_huggingface()
    assert hf["segmentation"].dtype == np.int32 and hf["segmentation"].max() == 3
    assert hf["segments_info"][0] == {"id": 1, "label_id": 2, "was_fused": False, "score": 0.9}


def test_instance_json_is_coco_rle_and_respects_the_score_threshold(tmp_path):
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 20:30, 20:40] = True
    masks[2, 0:4, 0:4] = True
    prediction = InstancePrediction(torch.from_numpy(masks), torch.tensor([1, 0, 0]), torch.tensor([0.9, 0.5, 0.1]),
                                torch.tensor([4, 2, 7]))
    result = InstanceResult.from_prediction(_image(), prediction, META, score_thr=0.3)
    paths = result.write(tmp_path / "y")
    assert [p.name for p in paths] == ["y.json", "y_overlay.png"]
    entries = json.loads((tmp_path / "y.json").read_text())
    assert [e["category_id"] for e in entries] == [3, 1] and [e["name"] for e in entries] == ["car", "person"]
    for entry, mask in zip(entries, masks[:2]):
        np.testing.assert_array_equal(mask_utils.decode(entry["segmentation"]).astype(bool), mask)
        assert entry["bbox"] == list(result.instances[masks.tolist().index(mask.tolist())].bbox)
    assert len(result.to_coco(image_id=7, score_thr=0.0)) == 3 and result.to_coco(image_id=7)[0]["image_id"] == 7


def test_a_caption_at_the_right_edge_stays_inside_the_picture():
    import cv2

    from knet.inference.results import draw_segments

    image = np.zeros((60, 100, 3), np.uint8)
    mask = np.zeros((60, 100), bool)
    mask[30:40, 94:] = True  # a segment at the right edge, narrower than its caption
    caption = "a long caption"
    out = draw_segments(image, [mask], [(255, 0, 0)], [caption], opacity=0.5)
    scale = float(np.clip(60 / 600.0, 0.3, 0.8))
    (width, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = out[25:30]  # the caption's box sits above the segment
    red_columns = np.flatnonzero(((band[..., 0] == 255) & (band[..., 1] == 0)).any(axis=0))
    assert red_columns.min() <= 100 - width + 1 and red_columns.max() == 99
