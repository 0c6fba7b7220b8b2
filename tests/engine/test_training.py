"""The training loop's parts: schedule, parameter groups, clipping, sampler, checkpoints, AMP
refusal, the NaN stop, fine-tuning to another class count, and convergence on the toy dataset."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import knet
from knet.config import TrainConfig
from knet.data.synthetic import make_synthetic_dataset
from knet.engine import training as T
from knet.errors import CheckpointError, KnetError

# A small, fast recipe for the loop tests: tiny model, 64 px crops, no warm-up surprises.
FAST = {
    "data.crop_size": "64,64", "data.train_scale": "64,64", "data.test_scale": "64,64",
    "train.batch_size": 2, "train.log_interval": 1, "train.warmup_iters": 2, "train.lr": 1e-3,
}


# One torch thread (see tests/conftest.py); `toy` is the small synthetic dataset fixture there.
pytestmark = pytest.mark.usefixtures("one_thread")


def fast_config(**extra):
    return knet.get_config("knet-r50-fcn-tiny", {**FAST, **extra})


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [1e-4, 6e-5])
def test_lr_values_of_the_reference_recipe(base):
    cfg = TrainConfig(lr=base)
    expected = {0: 0.001, 999: 0.999001, 1000: 1.0, 59999: 1.0, 60000: 0.1, 71999: 0.1, 72000: 0.01, 79999: 0.01}
    for iteration, factor in expected.items():
        assert T.lr_factor(iteration, cfg) * base == pytest.approx(factor * base, rel=1e-9), iteration

    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=base)
    schedule = T.WarmupStepSchedule(optimizer, cfg)
    for iteration, factor in expected.items():
        assert schedule.apply(iteration) == pytest.approx(factor * base, rel=1e-9)
        assert all(g["lr"] == pytest.approx(factor * base, rel=1e-9) for g in optimizer.param_groups)
    state = schedule.state_dict()
    other = T.WarmupStepSchedule(torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0), cfg)
    other.load_state_dict(state)
    assert other.lr_at(60000) == pytest.approx([0.1 * base, 0.1 * base])


def test_default_recipe_is_the_reference():
    r50, swin = knet.get_config("knet-r50-fcn").train, knet.get_config("knet-swin-t-upernet").train
    assert (r50.lr, r50.weight_decay, r50.clip_grad_norm, r50.iters, r50.batch_size) == (1e-4, 5e-4, 1.0, 80000, 2)
    assert (r50.val_interval, r50.checkpoint_interval, r50.no_decay_keys) == (8000, 8000, ())
    assert (swin.lr, tuple(swin.betas), swin.weight_decay) == (6e-5, (0.9, 0.999), 5e-4)


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------
def _expected_swin_no_decay(model: nn.Module):
    """The reference's exemptions spelled out by module type: every LayerNorm except the one in the
    kernel-update heads' mask_fcs, plus the relative position tables (and absolute position
    embeddings when the backbone has them); never a BatchNorm."""
    expected = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and ".mask_fcs." not in name:
            expected.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    for name, _ in model.named_parameters():
        if name.endswith("relative_position_bias_table") or name.endswith("absolute_pos_embed"):
            expected.add(name)
    return expected


def test_swin_no_decay_set_matches_the_reference_rule():
    model = knet.build_model("knet-swin-t-upernet-tiny")
    cfg = model.config.train
    groups = T.build_param_groups(model, cfg)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    no_decay = set(groups[1]["names"])
    assert no_decay == _expected_swin_no_decay(model)
    # The kinds the issue lists are all there, and the excluded ones are not.
    for part in ("backbone.patch_embed.norm.", "backbone.stages.0.downsample.norm.", "backbone.norm3.",
                 "backbone.stages.0.blocks.0.norm1.", "relative_position_bias_table",
                 "decode_head.kernel_update_head.0.attention_norm.", "decode_head.kernel_update_head.0.ffn_norm.",
                 "decode_head.kernel_update_head.0.kernel_update_conv.norm_in."):
        assert any(part in n for n in no_decay), part
    bn_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 for p, _ in m.named_parameters(recurse=False)}
    assert bn_params and not (bn_params & no_decay)
    assert not any(".mask_fcs." in n for n in no_decay)
    # Every trainable parameter is in exactly one group.
    names = groups[0]["names"] + groups[1]["names"]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = T.build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["lr"] == 6e-5


def test_resnet_presets_decay_everything():
    model = knet.build_model("knet-r50-fcn-tiny")
    groups = T.build_param_groups(model, model.config.train)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4
    assert len(groups[0]["params"]) == len(list(model.parameters()))


# --------------------------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------------------------
def test_gradient_clipping_to_total_norm():
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=4)
    model.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    params = list(model.parameters())
    optimizer = T.build_optimizer(model, model.config.train)

    loss = sum(model(x, y).values())
    raw = T.backward_step(loss, optimizer, params, clip_grad_norm=None)
    assert raw > 1.0  # a fresh model's gradients are far above the clip of 1.0

    loss = sum(model(x, y).values())
    before = T.backward_step(loss, optimizer, params, clip_grad_norm=1.0)
    after = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item()
    assert before > 1.0 and after == pytest.approx(1.0, rel=1e-4)

    loss = sum(model(x, y).values())
    big = T.backward_step(loss, optimizer, params, clip_grad_norm=1e9)
    unclipped = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm().item()
    assert unclipped == pytest.approx(big, rel=1e-5)


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------
def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_sampler_shards_resumes_and_reshuffles():
    size, world = 10, 3
    streams = [_take(iter(T.InfiniteSampler(size, seed=5, rank=r, world_size=world)), 8) for r in range(world)]
    per_rank = 4  # ceil(10 / 3)
    first_epoch = [key for s in streams for key in s[:per_rank]]
    assert {i for i, _ in first_epoch} == set(range(size))  # the epoch covers the dataset (padded)
    numbers = [n for s in streams for _, n in s]
    assert len(set(numbers)) == len(numbers)  # sample numbers are unique over ranks
    full = _take(iter(T.InfiniteSampler(size, seed=5, rank=1, world_size=world)), 11)
    resumed = _take(iter(T.InfiniteSampler(size, seed=5, rank=1, world_size=world, start=6)), 5)
    assert resumed == full[6:]
    one = T.InfiniteSampler(size, seed=5)
    assert one.order(0) != one.order(1) and sorted(one.order(1)) == list(range(size))
    with pytest.raises(KnetError):
        T.InfiniteSampler(0, seed=0)


def test_augmentation_depends_on_sample_number_not_worker(toy):
    from knet.data.datasets import build_dataset
    from knet.data.transforms import TrainPipeline

    cfg = fast_config()
    samples = T.TrainSamples(build_dataset("folder", toy.root, "train"), TrainPipeline(cfg.data), seed=1,
                             mean=cfg.data.mean, std=cfg.data.std)
    a, b, c = samples[(3, 17)], samples[(3, 17)], samples[(3, 18)]
    assert a[0].shape == (3, 64, 64) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------
def test_checkpoint_manager_keeps_newest_and_one_best(tmp_path):
    manager = T.CheckpointManager(tmp_path, keep=2)
    for it in (2, 4, 6):
        manager.save({"iteration": it}, it)
    assert [i for i, _ in manager.iteration_checkpoints()] == [4, 6]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "iter_6.pth"
    assert manager.latest() == tmp_path / "iter_6.pth"
    manager.save_best({"iteration": 4}, 4)
    manager.save_best({}, 6, copy_of=tmp_path / "iter_6.pth")
    assert [p.name for p in manager.best_checkpoints()] == ["best_mIoU_iter_6.pth"]
    assert torch.load(tmp_path / "best_mIoU_iter_6.pth")["iteration"] == 6
    (tmp_path / "last_checkpoint").write_text("iter_99.pth\n")  # names a missing file: fall back
    assert manager.latest() == tmp_path / "iter_6.pth"
    with pytest.raises(KnetError):
        T.CheckpointManager(tmp_path, keep=0)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("interrupted while writing")


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "iter_2.pth"
    T.atomic_torch_save({"iteration": 2}, path)
    with pytest.raises(RuntimeError):
        T.atomic_torch_save({"iteration": 3, "bad": _Unpicklable()}, path)
    assert torch.load(path)["iteration"] == 2  # the old complete file is still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth"]  # no temporary left


def test_training_checkpoint_contents_and_loading(toy, tmp_path):
    cfg = fast_config(**{"train.iters": 2, "train.checkpoint_interval": 2})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, quiet=True, data_root=toy.root))
    path = tmp_path / "iter_2.pth"
    assert result.last_checkpoint == path and result.iteration == 2
    ckpt = torch.load(path, weights_only=True)  # plain data: readable without running pickled code
    for key in ("state_dict", "optimizer", "scheduler", "iteration", "rng", "sampler", "config", "meta"):
        assert key in ckpt, key
    assert ckpt["iteration"] == 2 and ckpt["sampler"]["consumed_per_rank"] == 4
    assert ckpt["meta"]["class_names"] == toy.class_names and ckpt["meta"]["palette"] == toy.palette
    assert ckpt["config"]["num_classes"] == 4 and ckpt["config"]["class_names"] == toy.class_names
    assert set(ckpt["rng"][0]) >= {"python", "numpy", "torch"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert knet.KNetConfig.from_dict(saved) == knet.KNetConfig.from_dict(ckpt["config"])
    model = knet.build_model(knet.KNetConfig.from_dict(ckpt["config"]))
    knet.load_checkpoint(model, path)
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train_records] == [1, 2]
    for field in ("iter", "lr", "loss", "decode.loss_ce.s0", "decode.loss_ce.s3", "aux.loss_ce", "time",
                  "data_time", "memory"):
        assert field in train_records[0], field
    val_records = [r for r in records if "mIoU" in r]
    assert [r["iter"] for r in val_records] == [2]
    assert set(val_records[0]) == {"iter", "aAcc", "mIoU", "mAcc"}
    assert (tmp_path / "best_mIoU_iter_2.pth").is_file()


# --------------------------------------------------------------------------------------------
# Mixed precision, NaN, fine-tuning
# --------------------------------------------------------------------------------------------
def test_bf16_on_cpu_is_refused_before_anything_runs(toy, tmp_path, monkeypatch):
    with pytest.raises(T.TrainingError, match="bf16"):
        T.check_amp("bf16", torch.device("cpu"))
    with pytest.raises(T.TrainingError, match="CUDA"):
        T.check_amp("fp16", torch.device("cpu"))
    assert T.check_amp(None, torch.device("cpu")) is None

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the AMP check")

    monkeypatch.setattr("knet.models.segmentor.build_model", no_model)
    with pytest.raises(KnetError, match="bf16"):
        T.train(fast_config(), T.TrainOptions(work_dir=tmp_path, data_root=toy.root, device="cpu", amp="bf16"))
    assert not (tmp_path / "log.jsonl").exists()


def test_nan_loss_stops_naming_the_iteration(toy, tmp_path):
    from knet.data.datasets import build_dataset
    from knet.data.transforms import TrainPipeline

    cfg = fast_config(**{"train.iters": 10, "train.checkpoint_interval": 2})
    pipeline = TrainPipeline(cfg.data)
    calls = {"n": 0}

    def poisoned(image, label, rng):  # the 7th sample (iteration 4 at batch 2) is NaN
        calls["n"] += 1
        chw, lab = pipeline(image, label, rng)
        return (chw * np.nan if calls["n"] == 7 else chw), lab

    train_set = build_dataset("folder", toy.root, "train")
    with pytest.raises(T.TrainingDivergedError) as err:
        T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, quiet=True), train_dataset=train_set,
                val_dataset=[], transform=poisoned)
    message = str(err.value)
    assert "iteration 4" in message and "iter_2.pth" in message
    assert isinstance(err.value, KnetError)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "iter_2.pth"
    assert not (tmp_path / "iter_4.pth").exists()
    ckpt = torch.load(tmp_path / "iter_2.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_finetune_to_another_number_of_classes(tmp_path):
    torch.manual_seed(1)
    source = knet.build_model("knet-r50-fcn-tiny", num_classes=6)
    torch.save({"state_dict": source.state_dict(), "meta": {}}, tmp_path / "six.pth")
    torch.manual_seed(2)
    target = knet.build_model("knet-r50-fcn-tiny", num_classes=4)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    reinit = T.load_for_finetuning(target, tmp_path / "six.pth")
    assert reinit == list(T.CLASS_DEPENDENT_KEYS)
    state = target.state_dict()
    for key, value in state.items():
        expected = fresh[key] if key in reinit else source.state_dict()[key]
        assert torch.equal(value, expected), key
    # Same number of classes: everything loads, nothing is re-initialised.
    same = knet.build_model("knet-r50-fcn-tiny", num_classes=6)
    assert T.load_for_finetuning(same, tmp_path / "six.pth") == []
    assert torch.equal(same.state_dict()["auxiliary_head.conv_seg.weight"], source.state_dict()["auxiliary_head.conv_seg.weight"])
    # Another architecture is refused with the keys named.
    other = knet.build_model("knet-r50-pspnet-tiny", num_classes=4)
    with pytest.raises(CheckpointError, match="does not fit"):
        T.load_for_finetuning(other, tmp_path / "six.pth")


def test_finetune_run_lists_reinitialised_tensors(toy, tmp_path, capsys):
    source = knet.build_model("knet-r50-fcn-tiny", num_classes=7)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "seven.pth")
    cfg = fast_config(**{"train.iters": 1})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=toy.root,
                                         load_from=tmp_path / "seven.pth"), val_dataset=[])
    assert result.reinitialized == list(T.CLASS_DEPENDENT_KEYS)
    out = capsys.readouterr().out
    assert "re-initialised for 4 classes" in out
    assert all(key in out for key in T.CLASS_DEPENDENT_KEYS)
    assert result.model.state_dict()["auxiliary_head.conv_seg.weight"].shape[0] == 4


# --------------------------------------------------------------------------------------------
# CUDA-only paths
# --------------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP and SyncBN paths)")


@cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_training_on_cuda(toy, tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = fast_config(**{"train.iters": 3})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, quiet=True, data_root=toy.root,
                                         device="cuda", amp=amp))
    assert result.iteration == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    ckpt = torch.load(tmp_path / "iter_3.pth", weights_only=True)
    assert (ckpt["scaler"] is not None) == (amp == "fp16")


@cuda
def test_syncbn_conversion_keeps_names_and_parameters():
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=4).cuda()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [n for n, _ in converted.named_parameters()] == names
    assert all(a is b for a, b in zip(converted.parameters(), params))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------
def test_tiny_knet_learns_the_toy_dataset(tmp_path):
    """A -tiny preset trained from scratch on CPU reaches mIoU >= 80% on held-out toy images."""
    data = make_synthetic_dataset(tmp_path / "toy", num_classes=4, num_train=64, num_val=16, seed=0)
    cfg = knet.get_config("knet-r50-fcn-tiny", {
        "data.crop_size": "256,256", "data.train_scale": "256,256", "data.test_scale": "256,256",
        "train.iters": 300, "train.batch_size": 4, "train.lr": 1e-3, "train.warmup_iters": 30,
        "train.milestones": "240", "train.val_interval": 300, "train.checkpoint_interval": 300,
        "train.log_interval": 50,
    })
    start = time.perf_counter()
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", data_root=data.root, workers=1, seed=0))
    seconds = time.perf_counter() - start
    print(f"toy convergence: mIoU {result.last_metrics['mIoU']:.2f} after {result.iteration} iterations "
          f"in {seconds:.0f} s")
    assert result.last_metrics["mIoU"] >= 80.0


def test_progress_bar_and_console_lines(toy, tmp_path, capsys):
    cfg = fast_config(**{"train.iters": 2})
    T.train(cfg, T.TrainOptions(work_dir=tmp_path, workers=0, data_root=toy.root, progress=True), val_dataset=[])
    captured = capsys.readouterr()
    assert "train:" in captured.err and "2/2" in captured.err  # the bar, on stderr
    line = [l for l in captured.out.splitlines() if l.startswith("iter 2/2")][0]
    for part in ("loss", "decode.loss_ce.s0", "decode.loss_ce.s3", "aux.loss_ce", "lr", "s/it", "eta"):
        assert part in line, part


@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="tensorboard is not installed")
def test_tensorboard_events(toy, tmp_path):
    T.train(fast_config(**{"train.iters": 2}), T.TrainOptions(work_dir=tmp_path, workers=0, data_root=toy.root,
                                                              quiet=True))
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_backbone_weights_are_loaded_before_training(toy, tmp_path, capsys):
    torch.manual_seed(3)
    imagenet = knet.build_model("knet-r50-fcn-tiny").backbone.state_dict()
    imagenet = {k: v + 0.5 if v.is_floating_point() else v for k, v in imagenet.items()}
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.zeros(10, 32), torch.zeros(10)  # an ImageNet classifier
    torch.save({"state_dict": imagenet}, tmp_path / "r50_v1c.pth")
    cfg = fast_config(**{"train.iters": 1, "train.lr": 0.0})  # lr 0: the parameters stay as loaded
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=toy.root,
                                         backbone_weights=tmp_path / "r50_v1c.pth"), val_dataset=[])
    for name, value in result.model.backbone.named_parameters():
        assert torch.equal(value, imagenet[name]), name
    assert "backbone weights" in capsys.readouterr().out
    with pytest.raises(CheckpointError):
        T.train(cfg, T.TrainOptions(work_dir=tmp_path / "bad", workers=0, data_root=toy.root,
                                    backbone_weights=tmp_path / "missing.pth"), val_dataset=[])
