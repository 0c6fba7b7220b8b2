"""The ``loss`` group of a panoptic/instance config drives the task's losses: each weight scales its
own losses, the matching costs reach the assigner, and the criterion is built once per run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import knet
import knet.tasks.mask as mask_task
from knet.data.mask_transforms import MaskSample
from knet.losses import total_loss
from knet.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _model_and_batch(preset: str, ignore_index: int = 255):
    """A tiny model of 3 things (+ 2 stuff) with random weights and a collated 2-image batch."""
    torch.manual_seed(0)
    config = knet.get_config(preset)
    config = config.replace(num_thing_classes=3, num_stuff_classes=2 if config.task == "panoptic" else 0,
                            class_names=None, palette=None, isthing=None, category_ids=None)
    config = config.replace({"data.ignore_index": ignore_index})
    model = knet.build_model(config).train()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        masks = np.zeros((2, 64, 64), dtype=np.uint8)
        masks[0, 5:30, 8:28] = 1
        masks[1, 34:60, 30 + 4 * i:62] = 1
        sem = None
        if config.task == "panoptic":
            sem = np.full((64, 64), 3, dtype=np.uint8)
            sem[40:] = 4
            sem[masks[0] == 1], sem[masks[1] == 1] = 0, 2
            sem[:, :3] = ignore_index
        samples.append(MaskSample(image=rng.standard_normal((3, 64, 64), dtype=np.float32), masks=masks,
                                  labels=np.array([0, 2]), sem_seg=sem, img_shape=(64, 64), flipped=False,
                                  scale_factor=(1.0, 1.0), seg_pad_value=ignore_index))
    return model, config, get_task(config.task).collate(samples)


def _losses(model, config, batch, task=None):
    task = task or get_task(config.task)
    images, targets = task.batch_inputs(batch, config, torch.device("cpu"))
    with torch.no_grad():
        return task.losses(model.outputs(images), targets, config)


@pytest.mark.parametrize("preset", ["knet-r50-fpn-panoptic-tiny", "knet-r50-fpn-instance-tiny"])
def test_each_weight_scales_its_own_losses(preset):
    model, config, batch = _model_and_batch(preset)
    base = _losses(model, config, batch)
    panoptic = config.task == "panoptic"
    changes = {"cls_weight": ("_loss_cls", 2.0), "mask_weight": ("_mask", 3.0), "dice_weight": ("_dice", 0.5),
               "seg_weight": ("loss_rpn_seg", 4.0)}
    if panoptic:
        changes["rank_weight"] = ("_rank", 0.3)
    for name, (suffix, value) in changes.items():
        default = getattr(config.loss, name)
        losses = _losses(model, config.replace({f"loss.{name}": value}), batch)
        assert sorted(losses) == sorted(base)
        for key, loss in losses.items():
            factor = value / default if key.endswith(suffix) else 1.0
            torch.testing.assert_close(loss, base[key] * factor, rtol=1e-6, atol=0, msg=f"{name}: {key}")
        changed = sum(float(v) for k, v in base.items() if k.endswith(suffix))
        assert float(total_loss(losses)) == pytest.approx(float(total_loss(base)) + (value / default - 1) * changed,
                                                          rel=1e-6)
    # A weight per stage multiplies every loss of that stage.
    weights = (1.0, 0.5, 2.0)
    losses = _losses(model, config.replace({"loss.stage_weights": weights}), batch)
    for key, loss in losses.items():
        factor = weights[int(key[1])] if key.startswith("s") else 1.0
        torch.testing.assert_close(loss, base[key] * factor, rtol=1e-6, atol=0, msg=key)


def test_matching_costs_and_focal_parameters_reach_the_criterion():
    model, config, batch = _model_and_batch("knet-r50-fpn-panoptic-tiny")
    task = get_task("panoptic")
    config = config.replace({"loss.cls_cost": 1.5, "loss.mask_cost": 0.0, "loss.dice_cost": 7.0,
                             "loss.focal_alpha": 0.4, "loss.focal_gamma": 1.0})
    criterion = task._criterion(config, None)
    assigner = criterion.assigner
    assert (assigner.cls_weight, assigner.mask_weight, assigner.dice_weight) == (1.5, 0.0, 7.0)
    assert (assigner.focal_alpha, assigner.focal_gamma) == (criterion.focal_alpha, criterion.focal_gamma) == (0.4, 1.0)
    # Other costs give other cost matrices, hence possibly other matches: the losses still compute.
    assert all(torch.isfinite(v) for v in _losses(model, config, batch, task).values())


def test_the_criterion_is_built_once_per_run(monkeypatch):
    built = []

    class Counting(mask_task.KNetDetCriterion):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(mask_task, "KNetDetCriterion", Counting)
    model, config, batch = _model_and_batch("knet-r50-fpn-panoptic-tiny")
    task = get_task("panoptic")
    first = _losses(model, config, batch, task)
    second = _losses(model, config, batch, task)
    assert len(built) == 1 and built[0]["dice_loss_weight"] == 4.0
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    # Other loss settings (another run's config on the same task) get their own criterion.
    _losses(model, config.replace({"loss.dice_weight": 1.0}), batch, task)
    assert len(built) == 2 and built[1]["dice_loss_weight"] == 1.0


def test_a_non_default_ignore_index_gives_the_same_losses():
    """The same batch with its void pixels and padding at 254 instead of 255, each through its own
    config: the data and the losses agree on the value, so the losses are those of 255."""
    model, config, batch = _model_and_batch("knet-r50-fpn-panoptic-tiny")
    other_model, other_config, other_batch = _model_and_batch("knet-r50-fpn-panoptic-tiny", ignore_index=254)
    other_model.load_state_dict(model.state_dict())
    assert (other_batch.sem_seg == 254).any() and not (other_batch.sem_seg == 255).any()
    base, other = _losses(model, config, batch), _losses(other_model, other_config, other_batch)
    for key in base:
        torch.testing.assert_close(other[key], base[key], rtol=0, atol=0, msg=key)
