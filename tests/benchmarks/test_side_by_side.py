"""benchmarks/side_by_side.py on a -tiny preset, where the reference cannot run: it says so and
prints knet's inference and training columns."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert [row[2].strip() for row in rows] == ["knet", "knet --low-memory"]
    for row in rows:
        seconds, memory = row[3].split(",")
        assert float(seconds.strip().rstrip("s")) > 0 and float(memory.strip().split()[0]) > 0
