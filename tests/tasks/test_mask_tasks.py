"""The panoptic and instance tasks: registration, the official training losses end to end from the
golden inputs, class-dependent keys, the pipeline and the drawings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import knet
from knet.losses import prepare_targets
from knet.postprocess import InstancePrediction, PanopticPrediction, PanopticSegment
from knet.tasks import TASKS, InstanceTask, PanopticTask, get_task
from tests.conftest import golden_path

GOLDENS = {
    "knet-det-panoptic": "knet-r50-fpn-panoptic-tiny",
    "knet-det-instance": "knet-r50-fpn-instance-tiny",
    "knet-det-panoptic-swin": "knet-swin-l-fpn-panoptic-ms3x-tiny",
}


def test_tasks_are_registered_with_their_metrics():
    assert TASKS["panoptic"] == ("knet.tasks.panoptic", "PanopticTask")
    assert TASKS["instance"] == ("knet.tasks.instance", "InstanceTask")
    panoptic, instance = get_task("panoptic"), get_task("instance")
    assert type(panoptic) is PanopticTask and type(instance) is InstanceTask
    assert (panoptic.name, panoptic.best_metric, instance.name, instance.best_metric) == ("panoptic", "PQ",
                                                                                          "instance", "AP")
    assert panoptic.best_metric in panoptic.summary_metrics and instance.best_metric in instance.summary_metrics
    assert (panoptic.dataset_kinds, instance.dataset_kinds) == (("coco_panoptic",), ("coco_instance",))


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
    image = np.full((30, 40, 3), 100, dtype=np.uint8)
    segment_map = torch.zeros((30, 40), dtype=torch.int32)
    segment_map[:, :20] = 1  # a stuff segment on the left half
    segment_map[5:15, 25:35] = 2  # two instances of thing class 0 on the right
    segment_map[18:28, 25:35] = 3
    segments = [PanopticSegment(1, 2, 0.9, 600, 12, False), PanopticSegment(2, 0, 0.8, 100, 3, True),
                PanopticSegment(3, 0, 0.7, 100, 5, True)]
    config = knet.get_config("knet-r50-fpn-panoptic-tiny").replace(
        num_thing_classes=2, num_stuff_classes=1, class_names=["cat", "dog", "sky"], isthing=None, category_ids=None,
        palette=[[200, 0, 0], [0, 200, 0], [0, 0, 200]])
    out = get_task("panoptic").visualize(image, PanopticPrediction(segment_map, segments), config, opacity=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[29, 39].tolist() == [100, 100, 100]  # void: the image
    assert out[20, 10].tolist() == [50, 50, 150]  # inside the stuff segment: 50% of its class colour
    assert out[20, 19].tolist() == [0, 0, 200]  # its contour: the full colour
    first, second = out[12, 30].tolist(), out[25, 30].tolist()
    assert first != second  # same class, different instances, different colours


def test_instance_drawing_shows_confident_instances_best_on_top():
    image = np.zeros((30, 30, 3), dtype=np.uint8)
    masks = torch.zeros((3, 30, 30), dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 10:25, :] = True
    masks[2, 27:30, 27:30] = True
    result = InstancePrediction(masks, torch.tensor([1, 0, 2]), torch.tensor([0.9, 0.5, 0.1]), torch.tensor([4, 2, 7]))
    config = knet.get_config("knet-r50-fpn-instance-tiny").replace(
        num_thing_classes=3, class_names=["a", "b", "c"], isthing=None, category_ids=None,
        palette=[[0, 200, 0], [200, 0, 0], [0, 0, 200]])
    out = get_task("instance").visualize(image, result, config, opacity=1.0)
    assert out[15, 15].tolist() == [200, 0, 0]  # the best instance is drawn over the larger one
    assert out[28, 28].tolist() == [0, 0, 0]  # the 0.1 instance is below the 0.3 display threshold
    shown_all = get_task("instance").visualize(image, result, config, opacity=1.0, score_thr=0.0)
    assert shown_all[28, 28].tolist() != [0, 0, 0]
