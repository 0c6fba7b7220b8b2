"""The panoptic and instance tasks: registration, the official training losses end to end from the
golden inputs, class-dependent keys, the pipeline and the drawings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import knet
from knet.losses import prepare_targets
from knet.postprocess import InstanceResult, PanopticResult, PanopticSegment
from knet.tasks import TASKS, InstanceTask, PanopticTask, get_task
from knet.tasks.panoptic import draw_regions, segment_colours
from tests.conftest import golden_path

GOLDENS = {
    "knet-det-panoptic": "knet-r50-fpn-panoptic-tiny",
    "knet-det-instance": "knet-r50-fpn-instance-tiny",
    "knet-det-panoptic-swin": "knet-swin-l-fpn-panoptic-ms3x-tiny",
}


def test_tasks_are_registered_with_their_metrics():
    assert TASKS["panoptic"] is PanopticTask and TASKS["instance"] is InstanceTask
    panoptic, instance = get_task("panoptic"), get_task("instance")
    assert (panoptic.name, panoptic.best_metric, instance.name, instance.best_metric) == ("panoptic", "PQ",
                                                                                          "instance", "AP")
    assert panoptic.best_metric in panoptic.summary_metrics and instance.best_metric in instance.summary_metrics
    with pytest.raises(NotImplementedError):  # needs the COCO datasets
        panoptic.evaluator(knet.get_config("knet-r50-fpn-panoptic"))


@pytest.mark.parametrize("preset", ["knet-r50-fpn-panoptic-tiny", "knet-r50-fpn-instance-tiny"])
def test_class_dependent_keys_are_exactly_the_class_sized_weights(preset):
    config = knet.get_config(preset)
    smaller = config.replace(num_thing_classes=3, class_names=None, palette=None, isthing=None, category_ids=None)
    with torch.device("meta"):
        own, other = knet.build_model(config).state_dict(), knet.build_model(smaller).state_dict()
    differing = {k for k in own if own[k].shape != other[k].shape}
    task = get_task(config.task)
    assert differing == set(task.class_dependent_keys)
    assert all(own[k].shape[0] == config.num_classes for k in task.class_dependent_keys)


@pytest.mark.parametrize("golden, preset", GOLDENS.items())
def test_losses_are_the_official_ones_end_to_end(golden, preset, one_thread):
    ref = dict(np.load(golden_path(f"det/{golden}.tiny.npz")))
    # The goldens' training pass ran with DropPath in eval mode (deterministic).
    model = knet.build_model(preset, {"backbone.drop_path_rate": 0.0} if "swin" in preset else None)
    knet.load_checkpoint(model, golden_path(f"det/{golden}.tiny.pth"))
    model.train()
    panoptic = model.config.task == "panoptic"
    targets = prepare_targets([torch.from_numpy(ref[f"gt_masks_{i}"]) for i in range(2)],
                              [torch.from_numpy(ref[f"gt_labels_{i}"]) for i in range(2)], ref["x"].shape[-2:],
                              [torch.from_numpy(s) for s in ref["gt_semantic_seg"]] if panoptic else None)
    losses = get_task(model.config.task).losses(model.outputs(torch.from_numpy(ref["x"])), targets, model.config)
    expected = {k[len("train__"):]: float(v) for k, v in ref.items() if k.startswith("train__") and "loss" in k}
    assert sorted(losses) == sorted(expected)  # every official loss, and no accuracy among them
    for key, value in losses.items():
        assert abs(float(value.detach()) - expected[key]) <= 1e-4 * abs(expected[key]) + 1e-6, key
    sum(losses.values()).backward()
    assert model.kernel_head.conv_seg.weight.grad is not None
    if "swin" not in preset:  # gradients reach the backbone, except its frozen stem and first stage
        assert model.backbone.layer4[0].conv1.weight.grad is not None
        assert model.backbone.layer1[0].conv1.weight.grad is None


def test_panoptic_drawing_colours_each_segment_and_outlines_it():
    image = np.full((6, 8, 3), 100, dtype=np.uint8)
    segment_map = torch.zeros((6, 8), dtype=torch.int32)
    segment_map[:, :4] = 1  # a stuff segment on the left half
    segment_map[1:4, 5:7] = 2  # two instances of thing class 0 side by side on the right
    segment_map[4:6, 5:7] = 3
    segments = [PanopticSegment(1, 2, 0.9, 24, 12, False), PanopticSegment(2, 0, 0.8, 6, 3, True),
                PanopticSegment(3, 0, 0.7, 4, 5, True)]
    palette = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
    out = get_task("panoptic").visualize(image, PanopticResult(segment_map, segments), palette, opacity=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[0, 7].tolist() == [100, 100, 100]  # void: the image
    assert out[2, 1].tolist() == [50, 50, 150]  # inside the stuff segment: 50% of its class colour
    assert out[2, 3].tolist() == [0, 0, 200]  # its outline towards void: the full colour
    assert out[0, 0].tolist() == [50, 50, 150]  # the image border is no outline
    first, second = out[2, 5].tolist(), out[5, 5].tolist()
    assert first == [200, 0, 0] and second != first  # same class, different instances, different colours
    assert out[0, 5].tolist() == [100, 100, 100]


def test_instance_drawing_shows_confident_instances_best_on_top():
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    masks = torch.zeros((3, 5, 5), dtype=torch.bool)
    masks[0, 1:4, 1:4] = True
    masks[1, 2:, :] = True
    masks[2, 0, 0] = True
    result = InstanceResult(masks, torch.tensor([1, 0, 2]), torch.tensor([0.9, 0.5, 0.1]), torch.tensor([4, 2, 7]))
    palette = [[0, 200, 0], [200, 0, 0], [0, 0, 200]]
    out = get_task("instance").visualize(image, result, palette, opacity=1.0)
    assert out[2, 2].tolist() == [200, 0, 0]  # the best instance is drawn over the larger one
    assert out[4, 4].tolist() == [0, 200, 0]
    assert out[0, 0].tolist() == [0, 0, 0]  # the 0.1 instance is below the 0.3 display threshold
    shown_all = get_task("instance").visualize(image, result, palette, opacity=1.0, score_thr=0.0)
    assert shown_all[0, 0].tolist() == [0, 0, 200]


def test_colours_and_regions_are_checked():
    assert segment_colours([1, 1, 1], [False, False, False], [[0, 0, 0], [10, 20, 30]]) == [(10, 20, 30)] * 3
    with pytest.raises(ValueError, match="no colour"):
        segment_colours([5], [True], [[0, 0, 0]])
    with pytest.raises(ValueError, match="opacity"):
        draw_regions(np.zeros((2, 2, 3), np.uint8), [], [], opacity=2.0)
