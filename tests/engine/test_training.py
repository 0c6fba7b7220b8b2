"""The training loop: what a checkpoint holds, the AMP refusal, the NaN stop, fine-tuning runs,
the CUDA-only paths, console and TensorBoard output, and convergence on the toy dataset."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import knet
from knet.data.synthetic import make_synthetic_dataset
from knet.engine import training as T
from knet.engine.checkpoints import CLASS_DEPENDENT_KEYS
from knet.engine.distributed import check_amp
from knet.errors import CheckpointError, KnetError
from knet.utils.device import cpu_has_native_bf16
from tests.conftest import SESSION_THREADS, assert_same_first_iteration_on_cuda, needs_cuda

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
# Checkpoint contents
# --------------------------------------------------------------------------------------------
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
        assert torch.equal(model.state_dict()[key], value.cpu()), key  # trained on CUDA where there is one
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
def test_bf16_on_a_cpu_without_it_is_refused_before_anything_runs(toy, tmp_path, monkeypatch):
    monkeypatch.setattr("knet.utils.precision.cpu_has_native_bf16", lambda: False)
    with pytest.raises(T.TrainingError, match="--amp bf16: this CPU has no native bfloat16 arithmetic"):
        check_amp("bf16", torch.device("cpu"))
    with pytest.raises(T.TrainingError, match="--amp fp16 runs on GPUs; on the CPU use bf16"):
        check_amp("fp16", torch.device("cpu"))
    assert check_amp(None, torch.device("cpu")) is None

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the AMP check")

    monkeypatch.setattr("knet.models.segmentor.build_model", no_model)
    with pytest.raises(KnetError, match="bf16"):
        T.train(fast_config(), T.TrainOptions(work_dir=tmp_path, data_root=toy.root, device="cpu", amp="bf16"))
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
def test_bf16_training_on_a_cpu_with_native_bf16(toy, tmp_path):
    assert check_amp("bf16", torch.device("cpu")) is torch.bfloat16
    result = T.train(fast_config(**{"train.iters": 2}),
                     T.TrainOptions(work_dir=tmp_path, workers=0, quiet=True, data_root=toy.root, device="cpu",
                                    amp="bf16"))
    assert result.iteration == 2
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}  # master weights stay fp32
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not torch.is_autocast_enabled("cpu")


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


def test_finetune_run_lists_reinitialised_tensors(toy, tmp_path, capsys):
    source = knet.build_model("knet-r50-fcn-tiny", num_classes=7)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "seven.pth")
    cfg = fast_config(**{"train.iters": 1})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=toy.root,
                                         load_from=tmp_path / "seven.pth"), val_dataset=[])
    assert result.reinitialized == list(CLASS_DEPENDENT_KEYS)
    out = capsys.readouterr().out
    assert "re-initialised for 4 classes" in out
    assert all(key in out for key in CLASS_DEPENDENT_KEYS)
    assert result.model.state_dict()["auxiliary_head.conv_seg.weight"].shape[0] == 4


# --------------------------------------------------------------------------------------------
# CUDA-only paths
# --------------------------------------------------------------------------------------------
@needs_cuda
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


@needs_cuda
def test_training_on_cuda_gives_the_cpu_losses(toy, tmp_path, no_tf32):
    cfg = fast_config(**{"train.iters": 1, "decode_head.dropout_ratio": 0.0, "auxiliary_head.dropout_ratio": 0.0})
    assert_same_first_iteration_on_cuda(cfg, toy.root, tmp_path)


@needs_cuda
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
@pytest.mark.slow  # ~90 s on one core
def test_tiny_knet_learns_the_toy_dataset(tmp_path):
    """A -tiny preset trained from scratch on CPU reaches mIoU >= 80% on held-out toy images."""
    # All of torch's threads, as a user's run: the loader's worker waits for the steps (a few ms
    # of data time per 0.25 s step at 2 threads; one thread makes the test 1.5x longer).
    torch.set_num_threads(SESSION_THREADS)
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
    line = [out_line for out_line in captured.out.splitlines() if out_line.startswith("iter 2/2")][0]
    for part in ("loss", "decode.loss_ce.s3", "aux.loss_ce", "lr", "s/it", "eta", "mem"):
        assert part in line, part
    assert "decode.loss_ce.s0" not in line  # the earlier stages are in log.jsonl only


def test_console_line_keeps_the_last_stage_main_terms():
    semantic = ["loss", "decode.loss_ce.s0", "decode.loss_ce.s1", "decode.loss_ce.s2", "decode.loss_ce.s3",
                "aux.loss_ce"]
    assert T._console_loss_names(semantic) == ["decode.loss_ce.s3", "aux.loss_ce"]
    panoptic = ["loss"] + [f"s{k}_loss_{t}" for k in range(3) for t in ("cls", "mask", "dice", "rank")] + [
        "loss_rpn_mask", "loss_rpn_dice", "loss_rpn_rank", "loss_rpn_seg"]
    assert len(panoptic) == 17
    assert T._console_loss_names(panoptic) == ["s2_loss_cls", "s2_loss_mask", "s2_loss_dice"]
    assert T._console_loss_names(["loss", "loss_a", "loss_b"]) == ["loss_a", "loss_b"]  # no stages: every term


@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="tensorboard is not installed")
def test_tensorboard_events(toy, tmp_path):
    T.train(fast_config(**{"train.iters": 2}), T.TrainOptions(work_dir=tmp_path, workers=0, data_root=toy.root,
                                                              quiet=True))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for name in ("loss", "decode.loss_ce.s3", "aux.loss_ce", "lr"):
        scalars = events.Scalars("train/" + name)  # the same values log.jsonl holds, per iteration
        assert [s.step for s in scalars] == [r["iter"] for r in records if name in r] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in records if name in r], rel=1e-6)


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
        assert torch.equal(value.cpu(), imagenet[name]), name
    assert "backbone weights" in capsys.readouterr().out
    with pytest.raises(CheckpointError):
        T.train(cfg, T.TrainOptions(work_dir=tmp_path / "bad", workers=0, data_root=toy.root,
                                    backbone_weights=tmp_path / "missing.pth"), val_dataset=[])


def test_low_memory_training_recomputes_backbone_stages(toy, tmp_path, capsys, monkeypatch):
    """``low_memory``: the model is built from ``low_memory_config`` of the config (the backbone's
    ``low_memory_recompute_stages`` recompute their activations), the config saved says so, the
    log too, and the run trains as usual. The trainer leaves the process's allocator alone."""
    from knet.utils import memory

    calls = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda *args, **kwargs: calls.append(args), raising=False)
    cfg = fast_config(**{"train.iters": 2})
    result = T.train(cfg, T.TrainOptions(work_dir=tmp_path / "run", workers=0, data_root=toy.root, low_memory=True),
                     val_dataset=[])
    assert calls == []
    stages = cfg.backbone.low_memory_recompute_stages
    assert stages == (0, 1, 2, 3)
    assert result.model.backbone.recompute_stages == stages == result.model.config.backbone.recompute_stages
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert tuple(saved["backbone"]["recompute_stages"]) == stages
    out = capsys.readouterr().out
    assert "recompute their activations in the backward pass" in out and "freed memory" not in out
    assert knet.build_model("knet-r50-fcn-tiny").backbone.recompute_stages == ()
