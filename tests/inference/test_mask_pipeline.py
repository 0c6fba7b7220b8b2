"""The panoptic/instance test pipeline from image files reproduces the official mmdetection 2.x
pipeline's results (``*.tiny.pipe.npz`` goldens, made from the same PNG files)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import knet
from knet.data.io import read_image
from knet.errors import KnetError
from knet.inference.mask_pipeline import MaskTestPipeline
from knet.inference.pipeline import TorchRunner
from knet.postprocess import InstancePrediction, PanopticPrediction, reference_encoding
from knet.tasks import get_task
from tests.conftest import golden_path

GOLDENS = {
    "knet-det-panoptic": "knet-r50-fpn-panoptic-tiny",
    "knet-det-instance": "knet-r50-fpn-instance-tiny",
    "knet-det-panoptic-swin": "knet-swin-l-fpn-panoptic-ms3x-tiny",
}


def _load(golden: str):
    model = knet.build_model(GOLDENS[golden])
    knet.load_checkpoint(model, golden_path(f"det/{golden}.tiny.pth"))
    images = [read_image(golden_path(f"det/{golden}.tiny.pipe_{i}.png")) for i in range(2)]
    return model.eval(), images, dict(np.load(golden_path(f"det/{golden}.tiny.pipe.npz")))


@pytest.fixture(scope="module", params=list(GOLDENS))
def golden(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, images, ref = _load(request.param)
        pipeline = get_task(model.config.task).pipeline(model)
        results = pipeline.predict(images)
    finally:
        torch.set_num_threads(threads)
    return request.param, pipeline, images, ref, results


def test_inputs_are_the_official_ones(golden):
    _, pipeline, images, ref, _ = golden
    for i, image in enumerate(images):
        np.testing.assert_array_equal(image, ref[f"pipe_img_{i}"])
        resized = pipeline.resize(image)
        assert resized.shape == tuple(ref[f"pipe_img_shape_{i}"])
        # cv2's fixed-point uint8 bilinear resize, exactly: a per-channel checksum.
        np.testing.assert_array_equal(resized.reshape(-1, 3).astype(np.int64).sum(0), ref[f"pipe_resized_sum_{i}"])
        prepared = pipeline.prepare(image)
        assert prepared.pad_shape == tuple(ref[f"pipe_pad_shape_{i}"][:2])
        assert prepared.img_shape == tuple(ref[f"pipe_img_shape_{i}"][:2])
        assert prepared.ori_shape == tuple(ref[f"pipe_ori_shape_{i}"][:2])
        assert np.abs(prepared.image[:, ::8, ::8] - ref[f"pipe_x_sub_{i}"]).max() <= 1e-5


def test_results_are_the_official_ones(golden):
    name, _, _, ref, results = golden
    for i, result in enumerate(results):
        if "panoptic" in name:
            assert isinstance(result, PanopticPrediction)
            # The same segments (official numbering: id - 1 in score order), labels and proposals.
            assert [s.id - 1 for s in result.segments] == ref[f"pipe_seg_ids_{i}"].tolist()
            assert [s.label for s in result.segments] == ref[f"pipe_seg_labels_{i}"].tolist()
            assert [s.proposal for s in result.segments] == ref[f"pipe_seg_proposals_{i}"].tolist()
            scores = np.array([s.score for s in result.segments])
            assert np.abs(scores - ref[f"pipe_seg_scores_{i}"]).max() <= 1e-4
            pan = reference_encoding(result).numpy()
            assert pan.shape == ref[f"pipe_pan_{i}"].shape
            assert (pan != ref[f"pipe_pan_{i}"]).mean() <= 0.005
        else:
            assert isinstance(result, InstancePrediction)
            np.testing.assert_array_equal(result.labels.numpy(), ref[f"pipe_ins_labels_{i}"])
            np.testing.assert_array_equal(result.proposal_indices.numpy(), ref[f"pipe_ins_proposal_inds_{i}"])
            assert np.abs(result.scores.numpy() - ref[f"pipe_ins_scores_{i}"]).max() <= 1e-4
            assert result.masks.shape == ref[f"pipe_ins_masks_{i}"].shape
            assert (result.masks.numpy() != ref[f"pipe_ins_masks_{i}"]).mean(axis=(1, 2)).max() <= 0.005


def test_a_batch_gives_the_batch_of_one_results(one_thread):
    model, images, _ = _load("knet-det-instance")
    pipeline = get_task("instance").pipeline(model)
    # Images 0 and 2 share their padded size and run as one batch of two; image 1 runs alone.
    inputs = [images[0], images[1], np.ascontiguousarray(images[0][::-1])]
    batched = pipeline.logits(inputs)
    alone = [pipeline.logits([image])[0] for image in inputs]
    for (cls_logits, mask_logits, prepared), (alone_cls, alone_masks, alone_prepared) in zip(batched, alone):
        assert prepared.pad_shape == alone_prepared.pad_shape
        torch.testing.assert_close(cls_logits, alone_cls, rtol=0, atol=1e-4 * float(alone_cls.abs().max()))
        torch.testing.assert_close(mask_logits, alone_masks, rtol=0, atol=1e-4 * float(alone_masks.abs().max()))
        a = pipeline.postprocess(cls_logits, mask_logits, prepared)
        b = pipeline.postprocess(alone_cls, alone_masks, alone_prepared)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.proposal_indices, b.proposal_indices)
        assert (a.masks != b.masks).float().mean() <= 0.005


def test_the_task_builds_the_pipeline_and_takes_the_one_runner_interface(one_thread):
    model = knet.build_model("knet-r50-fpn-instance-tiny").eval()
    task = get_task("instance")
    # What generic code (the evaluation loop) passes: a runner and the semantic pipeline's options.
    pipeline = task.pipeline(TorchRunner(model), mode="whole", crop_size=None, stride=None, test_scale=(64, 48),
                             tta=False)
    assert isinstance(pipeline, MaskTestPipeline) and isinstance(pipeline.runner, TorchRunner)
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    prepared = pipeline.prepare(image)
    assert prepared.img_shape == (38, 64) and prepared.pad_shape == (64, 64)
    (result,) = pipeline.predict([image])
    assert result.masks.shape == (10, 30, 50) and result.scores.shape == (10,)
    assert bool((result.scores[:-1] >= result.scores[1:]).all())
    with pytest.raises(KnetError, match="whole images"):
        task.pipeline(model, mode="slide")
    with pytest.raises(KnetError, match="whole images"):
        task.pipeline(model, tta=True)
    with pytest.raises(KnetError, match="panoptic or instance model"):
        task.pipeline(knet.build_model("knet-r50-fcn-tiny"))
    with pytest.raises(KnetError, match="uint8"):
        pipeline.predict([image.astype(np.float32)])
