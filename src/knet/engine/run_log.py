"""What a training run reports, on rank 0 only: console lines (with a progress bar on a
terminal), ``log.jsonl`` (one JSON object per logged iteration and per validation) and
TensorBoard events under ``tb/`` when tensorboard is installed.
"""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from ..utils.atomic import atomic_write_text

LOG_NAME = "log.jsonl"

__all__ = [
    "LOG_NAME",
    "RunLog",
    "format_eta",
    "memory_mb",
]


class RunLog:
    """Console lines, ``log.jsonl`` and TensorBoard, on rank 0 only."""

    def __init__(self, work_dir: Path, enabled: bool, start_iter: int, total: int, progress: bool,
                 quiet: bool) -> None:
        self.enabled = enabled
        self.quiet = quiet
        self.path = work_dir / LOG_NAME
        self.total = total
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self._truncate_after(start_iter)
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except Exception:  # tensorboard is an optional extra
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)
        if progress:
            from ..utils.progress import ProgressBar

            self.bar = ProgressBar(total=total - start_iter,
                                   desc="train" + (f" from {start_iter}" if start_iter else ""))

    def _truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` left by a run that was killed after its last checkpoint
        (they are about to be recomputed)."""
        if not self.path.exists():
            return
        if iteration == 0:
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if int(record.get("iter", 0)) <= iteration:
                kept.append(json.dumps(record))
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def info(self, message: str) -> None:
        if self.enabled and not self.quiet:
            if self.bar is not None:  # clear the bar's line; it redraws on the next update
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            print(message, flush=True)

    def record(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["iter"])
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tb.add_scalar(("val/" if key in ("aAcc", "mIoU", "mAcc") else "train/") + key, value, step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated on GPUs, the process's resident size elsewhere."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)
