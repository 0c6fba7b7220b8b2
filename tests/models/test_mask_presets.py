"""The panoptic/instance presets: the official parameter counts, a forward pass of every full-size
row, tiny twins with the golden files' shapes, and their configs (KNetMaskConfig)."""
from __future__ import annotations

import json

import pytest
import torch

import knet
from knet.checkpoint.reference import convert_reference_state_dict
from knet.checkpoint.safe_load import safe_load
from knet.config import (ConfigError, KNetConfig, KNetMaskConfig, PlainResNetConfig, SwinConfig, TrainConfig,
                         config_from_dict)
from knet.models.mask_segmentor import KNetMaskSegmentor
from knet.models.segmentor import KNet, build_model
from knet.presets import REFERENCE_CHECKPOINTS, REFERENCE_CONFIGS, RESULTS_TABLE
from tests.conftest import golden_path

# Official whole-model parameter counts.
MASK_ROWS = {
    "knet-r50-fpn-panoptic": 37_536_852,
    "knet-r50-fpn-panoptic-ms3x": 37_536_852,
    "knet-r101-fpn-panoptic-ms3x": 56_528_980,
    "knet-r101-dcn-fpn-panoptic-ms3x": 57_815_152,
    "knet-swin-l-fpn-panoptic-ms3x": 208_781_224,
    "knet-r50-fpn-instance": 37_482_368,
    "knet-r50-fpn-instance-ms3x": 37_482_368,
    "knet-r101-fpn-instance-ms3x": 56_474_496,
    "knet-r101-dcn-fpn-instance-ms3x": 57_760_668,
}
# The ms-3x rows build the same network as their 1x row (they differ in data and schedule): one
# forward pass covers both.
SAME_NETWORK = {
    "knet-r50-fpn-panoptic": ["knet-r50-fpn-panoptic-ms3x"],
    "knet-r101-fpn-panoptic-ms3x": [],
    "knet-r101-dcn-fpn-panoptic-ms3x": [],
    "knet-r50-fpn-instance": ["knet-r50-fpn-instance-ms3x"],
    "knet-r101-fpn-instance-ms3x": [],
    "knet-r101-dcn-fpn-instance-ms3x": [],
}
# Golden file -> the preset of the official config it was made from.
TINY_GOLDENS = {
    "knet-det-panoptic": "knet-r50-fpn-panoptic-tiny",
    "knet-det-instance": "knet-r50-fpn-instance-tiny",
    "knet-det-panoptic-swin": "knet-swin-l-fpn-panoptic-ms3x-tiny",
}


def test_every_row_is_listed_with_its_results_and_a_tiny_twin():
    names = knet.list_presets()
    for row in MASK_ROWS:
        assert row in names and f"{row}-tiny" in names
        assert RESULTS_TABLE[row]["task"] == knet.get_config(row).task
        assert ("PQ" in RESULTS_TABLE[row]) == (knet.get_config(row).task == "panoptic")
        assert RESULTS_TABLE[row]["params_m"] == round(MASK_ROWS[row] / 1e6, 2)
    assert RESULTS_TABLE["knet-swin-l-fpn-panoptic-ms3x"]["PQ_test_dev"] == 55.2
    assert RESULTS_TABLE["knet-r101-dcn-fpn-instance-ms3x"]["AP"] == 40.5
    assert REFERENCE_CHECKPOINTS["knet-r50-fpn-panoptic"] == (
        "https://download.openmmlab.com/mim-example/knet/det/knet/knet_s3_r50_fpn_1x_coco-panoptic/"
        "knet_s3_r50_fpn_1x_coco-panoptic_20211017_151750-395fbcba.pth")
    # Two rows were published without a checkpoint.
    assert {row for row in MASK_ROWS if row not in REFERENCE_CHECKPOINTS} == {
        "knet-r50-fpn-instance-ms3x", "knet-r101-fpn-instance-ms3x"}
    for row in MASK_ROWS:
        if row in REFERENCE_CHECKPOINTS:
            assert f"/{REFERENCE_CONFIGS[row]}/{REFERENCE_CONFIGS[row]}_" in REFERENCE_CHECKPOINTS[row]


def test_full_size_parameter_counts_equal_the_official_ones():
    for name, expected in MASK_ROWS.items():
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = knet.build_model(name)
        assert isinstance(model, KNetMaskSegmentor) and model.config.name == name
        assert sum(p.numel() for p in model.parameters()) == expected, name


def _network(name: str) -> dict:
    """The settings that shape the network (not the data, schedule, thresholds or name)."""
    data = knet.get_config(name).to_dict()
    return {k: v for k, v in data.items() if k not in ("name", "data", "train", "postprocess")}


def test_every_resnet_row_has_a_forward_test():
    covered = set(SAME_NETWORK) | {sibling for siblings in SAME_NETWORK.values() for sibling in siblings}
    assert covered == {name for name in MASK_ROWS if "swin" not in name}


@pytest.mark.parametrize("name", SAME_NETWORK)
def test_full_size_forward(name, one_thread):
    for sibling in SAME_NETWORK[name]:
        assert _network(sibling) == _network(name)
    model = knet.build_model(name).eval()
    num_kernels = 100 + model.config.num_stuff_classes
    with torch.no_grad():
        output = model(torch.randn(1, 3, 64, 64))
        masks = model.final_mask_logits(output)
    assert output.final_classes.shape == (1, num_kernels, model.config.num_classes)
    assert masks.shape == (1, num_kernels, 16, 16)
    assert torch.isfinite(output.final_classes).all() and torch.isfinite(masks).all()


@pytest.mark.slow  # building Swin-L (209M parameters) takes ~6 s on one core
def test_swin_l_forward(one_thread):
    model = knet.build_model("knet-swin-l-fpn-panoptic-ms3x").eval()
    with torch.no_grad():
        output = model(torch.randn(1, 3, 64, 64))
    assert output.final_classes.shape == (1, 153, 133) and torch.isfinite(output.final_masks).all()


@pytest.mark.parametrize("golden, preset", TINY_GOLDENS.items())
def test_tiny_twins_have_the_golden_files_shapes(golden, preset):
    official = safe_load(golden_path(f"det/{golden}.tiny.pth"))["state_dict"]
    converted, unaccounted = convert_reference_state_dict(official)
    assert not unaccounted
    with torch.device("meta"):
        model = knet.build_model(preset)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in converted.items()}


def test_tiny_twins_are_exactly_the_golden_overrides():
    cfg = knet.get_config("knet-r101-dcn-fpn-panoptic-ms3x-tiny")
    assert cfg.backbone == PlainResNetConfig(depth=101, base_channels=8, dcn_stages=(False, True, True, True))
    assert cfg.neck.out_channels == 32 and cfg.postprocess.max_per_img == 10
    assert (cfg.kernel_head.num_proposals, cfg.kernel_head.num_groups, cfg.kernel_head.pos_num_feats) == (10, 8, 16)
    ku = cfg.kernel_update
    assert (ku.num_heads, ku.feedforward_channels, ku.updator_channels, ku.num_stages) == (4, 64, 32, 3)
    swin = knet.get_config("knet-swin-l-fpn-panoptic-ms3x-tiny").backbone
    assert swin == SwinConfig(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.2)


def test_recipes_follow_the_official_configs():
    cfg = knet.get_config("knet-r50-fpn-panoptic")
    assert cfg.backbone == PlainResNetConfig(depth=50, frozen_stages=1, norm_eval=True)
    assert (cfg.num_thing_classes, cfg.num_stuff_classes, cfg.num_classes) == (80, 53, 133)
    assert cfg.data.test_scale == (1333, 800) and cfg.data.size_divisor == 32 and cfg.data.flip_prob == 0.5
    assert cfg.data.mean == (123.675, 116.28, 103.53) and cfg.data.std == (58.395, 57.12, 57.375)
    assert cfg.data.train_scales == ((1333, 800),)
    # The official 1x recipe, plus knet's choice of the CPU memory layout for training.
    assert cfg.train == TrainConfig(lr=1e-4, weight_decay=0.05, backbone_lr_mult=0.25, clip_grad_norm=1.0,
                                    warmup_iters=1000, warmup_ratio=1e-3, epochs=12, milestone_epochs=(8, 11),
                                    cpu_channels_last=True)
    ms = knet.get_config("knet-r101-fpn-instance-ms3x")
    assert ms.data.train_scales == ((1333, 640), (1333, 800)) and ms.data.multiscale_mode == "range"
    assert (ms.train.epochs, ms.train.milestone_epochs) == (36, (27, 33))
    assert (ms.num_stuff_classes, ms.num_classes, ms.task) == (0, 80, "instance")
    post = cfg.postprocess
    assert (post.instance_score_thr, post.overlap_thr, post.mask_thr, post.max_per_img) == (0.3, 0.6, 0.5, 100)
    assert knet.get_config("knet-swin-l-fpn-panoptic-ms3x").backbone.drop_path_rate == 0.2


def test_class_tables_are_cocos():
    pan = knet.get_config("knet-r50-fpn-panoptic")
    assert pan.class_names[7] == "truck" and pan.class_names[80] == "banner" and len(pan.palette) == 133
    assert pan.isthing == [True] * 80 + [False] * 53
    assert pan.category_ids[:3] == [1, 2, 3] and pan.category_ids[79] == 90 and pan.category_ids[80] == 92
    ins = knet.get_config("knet-r50-fpn-instance")
    assert ins.class_names == pan.class_names[:80] and ins.category_ids == pan.category_ids[:80]


def test_build_model_dispatches_on_the_config_class():
    assert isinstance(build_model("knet-r50-fcn-tiny"), KNet)
    model = build_model(knet.get_config("knet-r50-fpn-instance-tiny"), {"kernel_head.num_proposals": 5})
    assert isinstance(model, KNetMaskSegmentor) and model.num_proposals == 5
    assert model.kernel_head.init_kernels.weight.shape[0] == 5
    assert knet.build_model is build_model  # the package-level name is this one


def test_config_round_trips_and_picks_its_class_from_the_task():
    for name in ("knet-r50-fpn-panoptic-tiny", "knet-swin-l-fpn-panoptic-ms3x", "knet-r101-dcn-fpn-instance-ms3x"):
        cfg = knet.get_config(name)
        data = json.loads(cfg.to_json())
        assert data["task"] == cfg.task and "num_classes" not in data  # derived, not stored
        assert config_from_dict(data) == cfg and KNetMaskConfig.from_dict(data) == cfg
    semantic = knet.get_config("knet-r50-fcn-tiny")
    legacy = {k: v for k, v in semantic.to_dict().items() if k != "task"}  # release 0.1 wrote no task
    assert config_from_dict(legacy) == semantic
    with pytest.raises(ConfigError, match="KNetMaskConfig"):
        KNetConfig.from_dict(knet.get_config("knet-r50-fpn-panoptic").to_dict())
    with pytest.raises(ConfigError, match="unknown task 'depth'"):
        config_from_dict({"task": "depth"})


def test_overrides_and_errors_name_the_valid_fields():
    cfg = knet.get_config("knet-r50-fpn-panoptic", {"backbone.dcn_stages": "false,true,true,true",
                                                     "data.train_scales": "[[1333, 640], [1333, 800]]",
                                                     "postprocess.overlap_thr": "0.5"})
    assert cfg.backbone.dcn_stages == (False, True, True, True) and cfg.postprocess.overlap_thr == 0.5
    assert cfg.data.train_scales == ((1333, 640), (1333, 800))
    swin = knet.get_config("knet-r50-fpn-panoptic", {"backbone.kind": "swin", "backbone.embed_dims": 16})
    assert swin.backbone == SwinConfig(embed_dims=16)  # switching the kind drops the ResNet settings
    assert cfg.replace(backbone={"kind": "swin", "embed_dims": 16}).backbone == swin.backbone
    with pytest.raises(ConfigError, match="'num_classes' is not a field of the model config; valid: .*num_stuff"):
        cfg.replace(num_classes=5)  # derived: set the thing and stuff counts
    with pytest.raises(ConfigError, match="'dilations' is not a field of backbone; valid: base_channels, dcn_stages"):
        cfg.replace({"backbone.dilations": "1,1,2,4"})
    with pytest.raises(ConfigError, match="no stuff classes"):
        cfg.replace(task="instance")
    with pytest.raises(ConfigError, match="class_names has 133 entries but the model has 90 classes"):
        cfg.replace(num_thing_classes=37)
    retargeted = cfg.replace(num_thing_classes=3, num_stuff_classes=2, class_names=None, palette=None, isthing=None,
                             category_ids=None)
    assert retargeted.num_classes == 5
    with pytest.raises(ConfigError, match="conv_kernel_size"):
        cfg.replace({"kernel_update.conv_kernel_size": 3})
