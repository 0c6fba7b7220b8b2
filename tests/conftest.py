"""Shared fixtures. The reference's golden files live in ../shared/goldens beside the checkout
(override with KNET_GOLDENS); tests that need them skip with a message when they are missing."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = Path(os.environ.get("KNET_GOLDENS", ROOT.parent / "shared" / "goldens"))

# glibc's malloc (knet.utils.memory sets its thresholds for training on the CPU)
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
# The tests of the CUDA paths; they skip on machines without a GPU.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PRESET_ROWS = [
    "knet-r50-fcn",
    "knet-r50-pspnet",
    "knet-r50-deeplabv3",
    "knet-r50-upernet",
    "knet-swin-t-upernet",
    "knet-swin-l-upernet",
    "knet-swin-l-upernet-640",
]


# torch's own choice of CPU threads (the cores it may use), what a user's process gets
SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Each test starts from seed 0 and with SESSION_THREADS (a test that sets its own, directly or
    through an API's ``threads=``, does not slow every later one down)."""
    torch.manual_seed(0)
    yield
    torch.set_num_threads(SESSION_THREADS)


@pytest.fixture
def one_thread():
    """One torch thread: on a small CPU shared with other processes, several threads per process
    can be an order of magnitude slower (they wait for each other's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_tf32():
    """Full fp32 on a CUDA GPU: cuDNN's convolutions default to TF32 (a 10-bit mantissa), whose
    rounding would hide what a CPU/CUDA comparison is about."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small synthetic folder dataset: 4 classes, 8 training and 2 validation 64x64 scenes."""
    from knet.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("toy"), num_classes=4, num_train=8, num_val=2,
                                  size=(64, 64), seed=0)


def golden_path(name: str) -> Path:
    """Path of a golden file; skips the test (saying what is missing) when it is absent."""
    path = GOLDENS / name
    if not path.exists():
        pytest.skip(f"golden file {path} is missing (the reference outputs in ../shared/goldens)")
    return path


def assert_same_first_iteration_on_cuda(cfg, data_root, work_dir, **options):
    """Train ``cfg`` for its iterations on the CPU and on CUDA from the same seed and data; the
    first iteration (same initial weights) has the same losses and gradient norm on both, to
    1e-4 relative. Dropout must be off in ``cfg`` (the devices draw different masks)."""
    import json

    from knet.engine import training as T

    first = {}
    for device in ("cpu", "cuda"):
        T.train(cfg, T.TrainOptions(work_dir=work_dir / device, data_root=data_root, device=device, workers=0,
                                    quiet=True, **options), val_dataset=[])
        lines = (work_dir / device / "log.jsonl").read_text().splitlines()
        first[device] = next(r for r in map(json.loads, lines) if r.get("iter") == 1 and "loss" in r)
    keys = [k for k in first["cpu"] if "loss" in k or k == "grad_norm"]
    assert len(keys) > 2 and set(keys) <= set(first["cuda"])
    for key in keys:
        assert first["cuda"][key] == pytest.approx(first["cpu"][key], rel=1e-4, abs=1e-6), key


def logits_tolerance(reference) -> float:
    """The issue's tolerance: 1e-4 x max(1, max |reference logit|)."""
    return 1e-4 * max(1.0, float(abs(reference).max()))


def subprocess_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the same arithmetic in every process, and fair to shared CPUs
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args, logs, expect_success=True):
    """Run ``torchrun --nproc_per_node=2 -m knet ARGS`` on CPU; returns the exit code and each
    rank's stdout and stderr: ``{rank: {"stdout": ..., "stderr": ...}}``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--log-dir", str(logs), "--redirects", "3",
           "-m", "knet"] + args
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    if expect_success and done.returncode != 0:
        rank_logs = "\n".join(f"--- {path.relative_to(logs)} ---\n{path.read_text()[-4000:]}"
                               for path in sorted(logs.rglob("*.log")))
        pytest.fail(f"torchrun exited with {done.returncode}\n{rank_logs}\n--- torchrun ---\n{done.stderr[-4000:]}")
    outputs = {}
    for rank in (0, 1):
        outputs[rank] = {}
        for stream in ("stdout", "stderr"):
            found = list(logs.rglob(f"attempt_0/{rank}/{stream}.log"))
            assert len(found) == 1, list(logs.rglob("*"))
            outputs[rank][stream] = found[0].read_text()
    return done.returncode, outputs


def count_winograd_calls(monkeypatch) -> list:
    """A list that grows by one (the input's dtype) for each forward that runs the Winograd path."""
    from knet.models.winograd import WinogradConv2d

    calls = []
    original = WinogradConv2d.runs_winograd

    def counted(self, x):
        used = original(self, x)
        if used:
            calls.append(x.dtype)
        return used

    monkeypatch.setattr(WinogradConv2d, "runs_winograd", counted)
    return calls


def assert_near_ties_only(labels, expected, probabilities) -> None:
    """Label maps equal except where the two best classes of ``probabilities`` (C, H, W) are within
    1e-4: the float rounding of another batch, backend or layout can flip only those."""
    import numpy as np

    top2 = np.sort(probabilities, axis=0)[-2:]
    differ = np.asarray(labels) != np.asarray(expected)
    assert np.all(top2[1][differ] - top2[0][differ] < 1e-4), int(differ.sum())
