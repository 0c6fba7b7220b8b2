"""Training the panoptic and instance models: the schedule in epochs, the backbone's lr multiplier,
torchvision ImageNet weights, a short run on the synthetic COCO set (classes adopted, best_PQ
checkpoint, console), the NaN stop and fine-tuning onto another class list."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import knet
from knet.config import TrainConfig, schedule_1x
from knet.data.mask_transforms import MaskTrainTransform
from knet.data.synthetic_coco import make_synthetic_coco
from knet.engine import training as T
from knet.engine.optim import WarmupStepSchedule, build_optimizer, build_param_groups, epochs_to_iterations
from knet.errors import CheckpointError, DataError
from knet.tasks import get_task
from knet.utils.device import cpu_has_native_bf16
from tests.conftest import assert_same_first_iteration_on_cuda, needs_cuda

pytestmark = pytest.mark.usefixtures("one_thread")

# 64-pixel scenes at their own size, a few iterations at a visible lr.
SMALL = {"data.test_scale": (64, 64), "data.train_scales": [[64, 64]], "train.epochs": None, "train.iters": 4,
         "train.batch_size": 2, "train.warmup_iters": 2, "train.lr": 1e-3, "train.log_interval": 1,
         "train.val_interval": 2, "train.checkpoint_interval": 2}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=2, size=(64, 64), seed=0)


def small_config(task="panoptic", **extra):
    return knet.get_config(f"knet-r50-fpn-{task}-tiny", {**SMALL, **extra})


# --------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------
def test_epochs_become_iterations_of_the_total_batch():
    # COCO train2017 (117266 images with things) at 16 images per iteration: the 1x schedule.
    converted, note = epochs_to_iterations(schedule_1x(), 117266, world_size=8)
    assert (converted.iters, converted.milestones, converted.epochs) == (12 * 7330, (8 * 7330, 11 * 7330), None)
    assert "12 epochs of 117266 images at 16 images per iteration" in note and "58640, 80630" in note
    assert epochs_to_iterations(TrainConfig(), 100) == (TrainConfig(), None)  # iteration-based: unchanged
    odd, _ = epochs_to_iterations(TrainConfig(batch_size=2, epochs=3, milestone_epochs=(2,)), 7)
    assert (odd.iters, odd.milestones) == (12, (8,))  # ceil(7 / 2) = 4 iterations per epoch


def test_backbone_trains_at_a_quarter_of_the_lr_through_the_whole_schedule():
    model = knet.build_model("knet-r50-fpn-panoptic-tiny")
    train_cfg = model.config.train
    assert (train_cfg.lr, train_cfg.backbone_lr_mult, train_cfg.weight_decay) == (1e-4, 0.25, 0.05)
    groups = build_param_groups(model, train_cfg)
    assert [g["lr"] for g in groups] == [1e-4, 2.5e-5]
    assert not any(n.startswith("backbone.") for n in groups[0]["names"])
    assert all(n.startswith("backbone.") for n in groups[1]["names"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sorted(groups[0]["names"] + groups[1]["names"]) == trainable
    assert not any(n.startswith("backbone.layer1.") or n.startswith("backbone.conv1") for n in trainable)  # frozen

    optimizer = build_optimizer(model, train_cfg)
    schedule = WarmupStepSchedule(optimizer, TrainConfig(lr=1e-4, warmup_iters=1000, milestones=(5000,)))
    for iteration, factor in ((0, 0.001), (500, 0.5005), (1000, 1.0), (5000, 0.1)):
        assert schedule.apply(iteration) == pytest.approx(1e-4 * factor)  # the logged lr is the base one
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4 * factor, 2.5e-5 * factor])

    semantic = knet.build_model("knet-r50-fcn-tiny")  # multiplier 1: one group, no lr of its own
    assert [set(g) for g in build_param_groups(semantic, semantic.config.train)] == [{"params", "names",
                                                                                      "weight_decay"}]


def _torchvision_file(backbone, path):
    """The backbone's tensors in torchvision's flat layout, scaled, with an ImageNet classifier and
    without deformable offsets (torchvision has none)."""
    state = {k: (v * 0.9 if v.is_floating_point() else v) for k, v in backbone.state_dict().items()
             if ".conv_offset." not in k}
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 2048), torch.zeros(10)
    torch.save(state, path)
    return state


def test_torchvision_imagenet_weights_for_the_mask_backbones(coco, tmp_path, capsys):
    from knet.checkpoint.pretrained import load_backbone_weights

    torch.manual_seed(1)
    weights = _torchvision_file(knet.build_model("knet-r50-fpn-panoptic-tiny").backbone, tmp_path / "r50.pth")
    cfg = small_config(**{"train.iters": 1, "train.lr": 0.0})  # lr 0: the parameters stay as loaded
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=coco.root,
                                         backbone_weights=tmp_path / "r50.pth"), val_dataset=[])
    for name, value in result.model.backbone.state_dict().items():
        if value.is_floating_point():  # frozen BatchNorm statistics (norm_eval) stay as loaded too
            assert torch.equal(value.cpu(), weights[name]), name
    assert "not loaded from the file: fc.weight, fc.bias" in capsys.readouterr().out

    dcn = knet.build_model("knet-r101-dcn-fpn-panoptic-ms3x-tiny").backbone
    _torchvision_file(knet.build_model("knet-r101-dcn-fpn-panoptic-ms3x-tiny").backbone, tmp_path / "r101.pth")
    assert load_backbone_weights(dcn, tmp_path / "r101.pth") == ["fc.weight", "fc.bias"]
    offsets = [v for k, v in dcn.state_dict().items() if ".conv_offset." in k]
    assert offsets and all(torch.count_nonzero(v) == 0 for v in offsets)  # a DCN starts as the plain conv

    with pytest.raises(CheckpointError, match="does not fit the ResNet backbone"):
        load_backbone_weights(knet.build_model("knet-r50-fpn-panoptic-tiny").backbone, tmp_path / "r101.pth")
    with pytest.raises(CheckpointError, match="resnet_torchvision weights, which do not fit a ResNetV1c"):
        load_backbone_weights(knet.build_model("knet-r50-fcn-tiny").backbone, tmp_path / "r50.pth")


def test_original_swin_release_for_the_swin_panoptic_model(coco, tmp_path, capsys):
    """The Swin-L 22k file of the reference's config is an original Swin release (``model``:
    ``patch_embed.proj``, ``layers.N.blocks.M``, ``head``): here its tiny golden twin."""
    from knet.checkpoint.pretrained import convert_swin_original
    from tests.conftest import golden_path

    path = golden_path("backbones/swin.tiny.original.pth")
    cfg = knet.get_config("knet-swin-l-fpn-panoptic-ms3x-tiny", {**SMALL, "train.iters": 1, "train.lr": 0.0,
                                                                   "backbone.drop_path_rate": 0.0})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root, backbone_weights=path),
                     val_dataset=[])
    expected, _ = convert_swin_original(torch.load(path, weights_only=True)["model"])
    for name, value in expected.items():
        assert torch.equal(result.model.backbone.state_dict()[name], value), name
    assert "head.weight" in capsys.readouterr().out  # the 22k classifier is not loaded


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
def test_short_panoptic_run_adopts_the_classes_and_keeps_the_best_pq(coco, tmp_path, capsys):
    result = T.train(small_config(), T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root,
                                                    progress=True))
    assert result.iteration == 4 and result.best_metric == "PQ" and result.best_value is not None
    assert result.best_checkpoint.name.startswith("best_PQ_iter_")
    assert set(result.last_metrics) == {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["num_thing_classes"], saved["num_stuff_classes"]) == (3, 3)
    assert saved["category_ids"] == [1, 2, 8, 5, 10, 12] and saved["class_names"] == coco.class_names
    ckpt = torch.load(tmp_path / "iter_4.pth", weights_only=True)
    assert ckpt["meta"]["task"] == "panoptic" and ckpt["meta"]["class_names"] == coco.class_names
    model = knet.build_model(knet.config.config_from_dict(ckpt["config"]))
    knet.load_checkpoint(model, tmp_path / "iter_4.pth")
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "PQ" in r] == [2, 4]
    assert {"s2_loss_cls", "s2_loss_dice", "loss_rpn_seg", "loss_rpn_rank", "grad_norm"} <= set(records[0])
    captured = capsys.readouterr()
    assert "train:" in captured.err and "iter 4/4" in captured.out and "validation: PQ" in captured.out
    assert "6 classes, panoptic" in captured.out and "backbone x0.25" in captured.out


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
def test_bf16_panoptic_training_on_a_cpu_with_native_bf16(coco, tmp_path):
    """The matching and the losses run in float32 under autocast (the Hungarian matching took a
    bf16 cost matrix before, which scipy refuses)."""
    result = T.train(small_config(**{"train.iters": 2, "train.val_interval": 2}),
                     T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root, quiet=True, device="cpu",
                                    amp="bf16"))
    assert result.iteration == 2 and {p.dtype for p in result.model.parameters()} == {torch.float32}
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_epoch_schedule_of_an_instance_run(coco, tmp_path, capsys):
    cfg = small_config("instance", **{"train.epochs": 2, "train.milestone_epochs": "1", "train.iters": 1000,
                                      "train.val_interval": 100, "train.checkpoint_interval": 100})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root, quiet=True))
    assert result.iteration == 6  # 2 epochs of the 6 training scenes at batch 2
    saved = json.loads((tmp_path / "config.json").read_text())["train"]
    assert (saved["iters"], saved["milestones"], saved["epochs"]) == (6, [3], None)
    assert result.best_checkpoint.name == "best_AP_iter_6.pth" and set(result.last_metrics) == {"AP", "AP50", "AP75"}


def test_nan_loss_stops_a_mask_run(coco, tmp_path):
    from knet.data.datasets import build_dataset

    cfg = small_config(**{"train.iters": 10, "train.checkpoint_interval": 2})
    augment = MaskTrainTransform([(64, 64)])
    calls = {"n": 0}

    def poisoned(image, item, rng):  # the 7th sample (iteration 4 at batch 2) is NaN
        calls["n"] += 1
        sample = augment(image, item, rng)
        if calls["n"] == 7:
            sample.image = sample.image * np.nan
        return sample

    train_set = build_dataset("coco_panoptic", coco.root, "train", filter_empty_gt=True)
    with pytest.raises(T.TrainingDivergedError, match="iteration 4.*iter_2.pth"):
        T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, quiet=True), train_dataset=train_set,
                val_dataset=[], transform=poisoned)


def test_finetuning_onto_other_classes_reinitialises_the_class_weights(coco, tmp_path):
    source = knet.build_model("knet-r50-fpn-panoptic-tiny")  # COCO's 80 + 53 classes
    torch.save({"state_dict": source.state_dict()}, tmp_path / "coco.pth")
    result = T.train(small_config(**{"train.iters": 1}),
                     T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=coco.root, quiet=True,
                                    load_from=tmp_path / "coco.pth"), val_dataset=[])
    assert result.reinitialized == list(get_task("panoptic").class_dependent_keys)
    assert result.model.kernel_update_head[2].fc_cls.weight.shape[0] == 6


def test_a_model_trains_only_on_the_datasets_of_its_task(coco, tmp_path):
    cfg = knet.get_config("knet-r50-fcn-tiny", {"train.iters": 1})
    with pytest.raises(DataError, match="semantic models train on folder or ade20k datasets, not on coco_panoptic"):
        T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root, dataset="coco_panoptic"))


# --------------------------------------------------------------------------------------------
# CUDA (these skip without a GPU)
# --------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_training_on_cuda_gives_the_cpu_losses(coco, tmp_path, no_tf32, task):
    assert_same_first_iteration_on_cuda(small_config(task, **{"train.iters": 1}), coco.root, tmp_path)


@needs_cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_amp_training_on_cuda(coco, tmp_path, task, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = T.train(small_config(task), T.TrainOptions(work_dir=tmp_path, workers=0, data_root=coco.root,
                                                        quiet=True, device="cuda", amp=amp))
    assert result.iteration == 4 and result.last_metrics  # validation ran on CUDA too
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
