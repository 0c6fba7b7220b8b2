"""benchmarks/side_by_side.py on a -tiny preset, where the reference cannot run: it says so and
prints knet's inference and training columns; and, where the reference is installed, its logits
check on several inputs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from knet.utils.device import cpu_has_native_bf16
from tests.conftest import subprocess_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "side_by_side.py"


def test_side_by_side_runs_knets_columns_without_the_reference(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--models", "fcn", "--size", "48", "--rounds", "1",
                           "--repeats", "1", "--train-steps", "1", "--threads", "1", "--low-memory",
                           "--work-dir", str(tmp_path)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "reference: not run (the -tiny presets have no reference config): knet's columns only" in out
    assert "CPU: " in out and "1 threads" in out and "reference not run" in out
    inference = out[out.index("Inference, batch 1"):out.index("Training step")]
    assert "| model | knet (s) |" in inference and "| knet-r50-fcn-tiny |" in inference
    training = out[out.index("Training step"):]
    rows = [line.split("|") for line in training.splitlines() if line.startswith("| knet-r50-fcn-tiny |")]
    bf16 = ["knet --amp bf16", "knet --amp bf16 --low-memory"] if cpu_has_native_bf16() else []
    assert [row[2].strip() for row in rows] == ["knet", "knet --low-memory"] + bf16
    for row in rows:
        seconds, memory = row[3].split(",")
        assert float(seconds.strip().rstrip("s")) > 0 and float(memory.strip().split()[0]) > 0


REFERENCE_PYTHON = Path(__file__).resolve().parents[3] / ".refenv" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_PYTHON.exists(), reason=f"the reference is not installed ({REFERENCE_PYTHON})")
def test_side_by_side_compares_logits_with_the_reference_on_several_inputs(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "fcn", "--size", "64", "--no-train",
                           "--rounds", "1", "--repeats", "1", "--inputs", "2", "--compile",
                           "--work-dir", str(tmp_path)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("Inference, batch 1"):]
    assert "logits vs reference (x max), median / max over 2 inputs |" in table
    row = next(line for line in table.splitlines() if line.startswith("| knet-r50-fcn |"))
    figures = {name: (float(median), float(largest))
               for name, median, largest in re.findall(r"([a-z][a-z0-9 ,]*?) (\S+) / (\S+?)(?:,|$)",
                                                       row.split("|")[-2].strip())}
    assert set(figures) == {"knet", "compiled", "reference, 1 thread", "reference compiled"}, row
    # knet's paths lie from the reference's output within a few times the reference's own spread
    # (its one-thread and compiled runs), the scale on which float32 pins this network's output.
    for mine, own in (("knet", "reference, 1 thread"), ("compiled", "reference compiled")):
        assert 0 <= figures[mine][0] <= figures[mine][1] < max(1e-4, 3 * figures[own][1]), (mine, row)
    saved = np.load(tmp_path / "fcn.logits.npz")
    assert saved["x"].shape == (2, 3, 64, 64)
    for name in ("logits", "logits_one_thread", "logits_compiled"):
        assert saved[name].shape == (2, 150, 64, 64), name
