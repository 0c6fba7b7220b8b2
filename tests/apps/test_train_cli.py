"""``knet train`` and ``knet plot-log`` from the command line: exact resume after SIGKILL,
torchrun with two CPU processes (gloo), user errors, the curves image; the same for the panoptic
and instance models on the synthetic COCO set, then ``knet test`` of what they trained."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from knet.cli import main
from knet.utils.device import cpu_has_native_bf16
from tests.conftest import run_torchrun, subprocess_env

SMALL = ["data.crop_size=64,64", "data.train_scale=64,64", "data.test_scale=64,64", "train.log_interval=1",
         "train.warmup_iters=4", "train.lr=1e-3"]


# One torch thread (see tests/conftest.py); `toy` is the small synthetic dataset fixture there.
pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(toy, work_dir, iters, *extra):
    return ["train", "--model", "knet-r50-fcn-tiny", "--data-root", str(toy.root), "--work-dir", str(work_dir),
            "--iters", str(iters), "--batch-size", "2", "--workers", "0", "--device", "cpu",
            *extra, "--set", *SMALL]


def records(work_dir):
    lines = (Path(work_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def resume_after_sigkill_equals_an_uninterrupted_run(args_of, tmp_path, iters=30):
    """Train ``iters`` iterations in one go, and again killed (SIGKILL) at iteration 7 or soon
    after, then resumed with ``--resume``: the last checkpoints are equal within 1e-5, the logs
    have each iteration once, the same checkpoints are kept. ``args_of(work_dir, iters, *extra)``
    is the ``knet train`` command line."""
    # the kill comes at iteration 7 or soon after: a wide window on a slow machine
    common = ["--checkpoint-interval", "3", "--val-interval", "4", "--keep", "2"]
    python = [sys.executable, "-m", "knet"]

    whole = tmp_path / "whole"
    done = subprocess.run(python + args_of(whole, iters, *common), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen(python + args_of(cut, iters, *common), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            log = cut / "log.jsonl"
            if log.exists():
                its = [json.loads(line)["iter"] for line in log.read_text().splitlines() if line.endswith("}")]
                if its and max(its) >= 7:
                    killed_at = max(its)
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert killed_at is not None and killed_at < iters
    assert not (cut / f"iter_{iters}.pth").exists()
    latest = (cut / "last_checkpoint").read_text().strip()
    assert latest in {f"iter_{k}.pth" for k in range(6, iters, 3)}
    torch.load(cut / latest, weights_only=True)  # the newest checkpoint is complete

    resumed = subprocess.run(python + args_of(cut, iters, *common, "--resume"), env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {cut / latest}" in resumed.stdout

    a = torch.load(whole / f"iter_{iters}.pth", weights_only=True)
    b = torch.load(cut / f"iter_{iters}.pth", weights_only=True)
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["state_dict"][key], atol=1e-5, rtol=0), key
        else:
            assert torch.equal(value, b["state_dict"][key]), key
    # The log of the resumed run has each iteration once, as the uninterrupted one.
    assert [r["iter"] for r in records(cut)] == [r["iter"] for r in records(whole)]
    assert sorted(p.name for p in cut.glob("*.pth")) == sorted(p.name for p in whole.glob("*.pth"))


@pytest.mark.slow  # ~13 s on one core
def test_resume_after_sigkill_equals_an_uninterrupted_run(toy, tmp_path):
    resume_after_sigkill_equals_an_uninterrupted_run(lambda work, iters, *extra: train_args(toy, work, iters, *extra),
                                                     tmp_path)


@pytest.mark.slow  # ~17 s on one core
def test_torchrun_two_cpu_processes(toy, tmp_path):
    work = tmp_path / "ddp"
    iters = 4
    _, outputs = run_torchrun(train_args(toy, work, iters, "--checkpoint-interval", "2", "--val-interval", "4"),
                           tmp_path / "logs")
    assert "parameters identical on all 2 ranks" in outputs[0]["stdout"]
    assert "iter 4/4" in outputs[0]["stdout"]
    assert outputs[1]["stdout"].strip() == ""  # only rank 0 prints

    # Only rank 0 wrote: one log with each iteration once, the checkpoints, nothing else.
    its = [r["iter"] for r in records(work) if "loss" in r]
    assert its == [1, 2, 3, 4]
    assert len([r for r in records(work) if "mIoU" in r]) == 1
    names = sorted(p.name for p in work.iterdir())
    assert names == sorted(["config.json", "iter_2.pth", "iter_4.pth", "last_checkpoint", "log.jsonl",
                            "best_mIoU_iter_4.pth"] + (["tb"] if (work / "tb").exists() else []))
    ckpt = torch.load(work / "iter_4.pth", weights_only=True)
    assert ckpt["sampler"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])

    # The distributed run resumes and goes on, still in step.
    _, outputs = run_torchrun(train_args(toy, work, 6, "--checkpoint-interval", "2", "--val-interval", "4", "--resume"),
                           tmp_path / "logs_resumed")
    assert f"resumed from {work / 'iter_4.pth'} at iteration 4" in outputs[0]["stdout"]
    assert "parameters identical on all 2 ranks" in outputs[0]["stdout"] and outputs[1]["stdout"].strip() == ""
    assert [r["iter"] for r in records(work) if "loss" in r] == [1, 2, 3, 4, 5, 6]

    # A user error that rank 0 finds stops every rank with the same one-line message (not a
    # traceback from a collective that lost its peer), and nothing is written.
    missing = tmp_path / "missing.pth"
    before = sorted(p.name for p in work.iterdir())
    code, outputs = run_torchrun(train_args(toy, work, 8, "--resume", str(missing)), tmp_path / "logs_error",
                              expect_success=False)
    assert code != 0
    for rank in (0, 1):
        assert outputs[rank]["stderr"].strip() == f"knet train: error: --resume {missing}: no such checkpoint file"
    assert sorted(p.name for p in work.iterdir()) == before


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
def test_torchrun_two_cpu_processes_train_in_bf16(toy, tmp_path):
    work = tmp_path / "ddp-bf16"
    _, outputs = run_torchrun(train_args(toy, work, 3, "--amp", "bf16", "--val-interval", "3"), tmp_path / "logs")
    assert "parameters identical on all 2 ranks" in outputs[0]["stdout"] and "iter 3/3" in outputs[0]["stdout"]
    # DDP's stride warning, a false alarm for the kernels' channels-last 1x1 weights, is not shown.
    assert not any("Grad strides" in outputs[rank]["stderr"] for rank in (0, 1)), outputs[0]["stderr"]
    losses = [r["loss"] for r in records(work) if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    ckpt = torch.load(work / "iter_3.pth", weights_only=True)
    # Autocast computes in bf16 but the weights, and so the checkpoint, stay float32.
    assert all(t.dtype == torch.float32 for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_user_errors_exit_2_with_one_line(toy, tmp_path, capsys):
    assert main(train_args(toy, tmp_path / "a", 2, "--amp", "fp16")) == 2  # fp16 is refused on every CPU
    err = capsys.readouterr().err.strip()
    assert err.startswith("knet train: error: --amp fp16 runs on GPUs") and "\n" not in err
    assert not (tmp_path / "a").exists()

    assert main(["train", "--model", "knet-r50-fcn-tiny", "--data-root", str(tmp_path / "nowhere"),
                 "--work-dir", str(tmp_path / "b")]) == 2
    assert "nowhere" in capsys.readouterr().err

    assert main(train_args(toy, tmp_path / "c", 2, "--resume", str(tmp_path / "missing.pth"))) == 2
    assert "missing.pth" in capsys.readouterr().err

    assert main(train_args(toy, tmp_path / "d", 2) + ["train.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_train_then_resume_without_checkpoint_and_plot(toy, tmp_path, capsys):
    work = tmp_path / "run"
    assert main(train_args(toy, work, 3, "--resume", "--checkpoint-interval", "2")) == 0
    out = capsys.readouterr().out
    assert "no checkpoint" in out and "iter 3/3" in out and "eta" in out and "lr" in out
    assert (work / "last_checkpoint").read_text().strip() == "iter_3.pth"

    # A fresh run into a work dir that holds another run's checkpoints is refused.
    assert main(train_args(toy, work, 3)) == 2
    assert "--resume" in capsys.readouterr().err

    # Nor may a fresh run start from a checkpoint it would write over, by any name.
    (tmp_path / "start.pth").symlink_to(work / "iter_3.pth")
    before = (work / "iter_3.pth").read_bytes()
    for load_from in (work / "iter_3.pth", tmp_path / "start.pth"):
        assert main(train_args(toy, work, 3, "--load-from", str(load_from))) == 2
        err = capsys.readouterr().err
        assert ("--work-dir: writing" in err and "would overwrite the input" in err
                and len(err.strip().splitlines()) == 1)
    assert (work / "iter_3.pth").read_bytes() == before

    # Resuming a finished run does nothing but say so.
    assert main(train_args(toy, work, 3, "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out

    png = tmp_path / "curves.png"
    assert main(["plot-log", str(work / "log.jsonl"), "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (1200, 450) and image.mode == "RGB"
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 5  # something was drawn
    assert main(["plot-log", str(work), "--out", str(tmp_path / "dir.png")]) == 0  # a work dir works too
    assert main(["plot-log", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_plot_log_reads_partial_logs(tmp_path):
    from knet.engine.curves import nice_ticks, plot_log, read_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1, "loss": 2.0}\n{"iter": 2, "loss": 1.5}\n{"iter": 2, "mIoU": 40.0, "aAcc": 70.0, '
                   '"mAcc": 50.0}\n{"iter": 3, "lo')  # the last line was cut by a kill
    train, val = read_log(log)
    assert [r["iter"] for r in train] == [1, 2] and [r["iter"] for r in val] == [2]
    out = plot_log(log, tmp_path / "c.png", size=(640, 320))
    assert Image.open(out).size == (640, 320)
    ticks = nice_ticks(0, 87)
    assert ticks[0] == 0 and ticks[-1] >= 87 and len(ticks) <= 8


def test_device_option_is_the_one_of_every_verb(toy, tmp_path, capsys):
    # `cuda:1` passes the parser as it does for `knet test`; without a GPU the error is the device's.
    code = main(train_args(toy, tmp_path / "gpu", 2, "--device", "cuda:1"))
    err = capsys.readouterr().err.strip()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU-only message cannot be checked here")
    assert code == 2 and err == ("knet train: error: device 'cuda:1' requested but CUDA is not available here "
                                 "(use --device cpu)")
    assert not (tmp_path / "gpu").exists()


# ---- panoptic and instance models on the synthetic COCO set ----------------------------------
MASK_SMALL = ["data.test_scale=64,64", "data.train_scales=[[64,64]]", "train.log_interval=1", "train.warmup_iters=4",
              "train.lr=1e-3"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from knet.data.synthetic_coco import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=2, size=(64, 64), seed=0)


def mask_train_args(coco, work_dir, iters, *extra, task="panoptic"):
    return ["train", "--model", f"knet-r50-fpn-{task}-tiny", "--data-root", str(coco.root), "--work-dir",
            str(work_dir), "--iters", str(iters), "--batch-size", "2", "--workers", "0", "--device", "cpu",
            *extra, "--set", *MASK_SMALL]


@pytest.mark.slow  # ~15 s on one core
def test_panoptic_resume_after_sigkill_equals_an_uninterrupted_run(coco, tmp_path):
    resume_after_sigkill_equals_an_uninterrupted_run(
        lambda work, iters, *extra: mask_train_args(coco, work, iters, *extra), tmp_path, iters=20)


def test_panoptic_torchrun_two_cpu_processes_stay_identical(coco, tmp_path):
    work = tmp_path / "ddp"
    _, outputs = run_torchrun(mask_train_args(coco, work, 4, "--checkpoint-interval", "2", "--val-interval", "2"),
                              tmp_path / "logs")
    assert "parameters identical on all 2 ranks" in outputs[0]["stdout"]  # else the run fails
    assert outputs[1]["stdout"].strip() == ""
    assert [r["iter"] for r in records(work) if "loss" in r] == [1, 2, 3, 4]
    assert [r["iter"] for r in records(work) if "PQ" in r] == [2, 4]
    ckpt = torch.load(work / "iter_4.pth", weights_only=True)
    assert ckpt["sampler"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert any(p.name.startswith("best_PQ_iter_") for p in work.iterdir())


@pytest.mark.parametrize("task, metric", [("panoptic", "PQ"), ("instance", "AP")])
def test_train_then_test_on_the_coco_toy_set(coco, tmp_path, capsys, task, metric):
    work = tmp_path / "run"
    assert main(mask_train_args(coco, work, 4, "--checkpoint-interval", "2", "--val-interval", "4", task=task)) == 0
    out = capsys.readouterr().out
    assert f"best {metric}" in out and f"best_{metric}_iter_4.pth" in out
    assert main(["test", "--checkpoint", str(work / "iter_4.pth"), "--data-root", str(coco.root), "--split", "val",
                 "--workers", "0", "--device", "cpu", "--quiet", "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    validation = [r for r in records(work) if metric in r][-1]
    assert {k: metrics[k] for k in validation if k != "iter"} == {k: v for k, v in validation.items() if k != "iter"}
    png = tmp_path / "curves.png"
    assert main(["plot-log", str(work), "--out", str(png)]) == 0 and png.is_file()


def test_mask_recipe_is_in_epochs_unless_iterations_are_given(coco, tmp_path, capsys):
    args = mask_train_args(coco, tmp_path / "epochs", 1)
    args = args[:args.index("--iters")] + args[args.index("--iters") + 2:]  # the preset's 12 epochs ...
    args += ["train.epochs=1", "train.milestone_epochs=[]", "train.val_interval=100"]  # ... made 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "schedule: 1 epochs of 6 images at 2 images per iteration = 3 iterations" in out and "iter 3/3" in out
    saved = json.loads((tmp_path / "epochs" / "config.json").read_text())["train"]
    assert (saved["iters"], saved["epochs"]) == (3, None)
