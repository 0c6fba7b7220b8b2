"""The training checkpoints of a work directory (full training state, unlike the model-weight
I/O of :mod:`knet.checkpoint`)::

    WORK_DIR/iter_<N>.pth              every ``checkpoint_interval`` iterations; the newest K are kept
    WORK_DIR/best_<metric>_iter_<N>.pth  the best validation score so far (one file), e.g.
                                         best_mIoU_iter_<N>.pth (the task names the metric)
    WORK_DIR/last_checkpoint           the file name of the newest ``iter_<N>.pth``

Every write is atomic: a kill at any moment leaves the old or the new complete file.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, TrainingError
from ..tasks.semantic import SemanticTask
from ..utils.atomic import atomic_write

PathLike = Union[str, Path]

# The semantic task's tensors whose first dimension is the number of classes (kept importable here;
# each task declares its own: ``Task.class_dependent_keys``).
CLASS_DEPENDENT_KEYS: Tuple[str, ...] = SemanticTask.class_dependent_keys

LAST_CHECKPOINT = "last_checkpoint"
_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")
_BEST_RE = re.compile(r"^best_[A-Za-z0-9]+_iter_(\d+)\.pth$")

__all__ = [
    "CLASS_DEPENDENT_KEYS",
    "CheckpointManager",
    "atomic_torch_save",
    "load_for_finetuning",
    "read_training_checkpoint",
]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`: ``path`` is always either the old complete
    file or the new complete file, flushed to disk."""
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


class CheckpointManager:
    """The checkpoints of a work directory: ``iter_<N>.pth`` (the newest ``keep`` are kept),
    ``best_<metric>_iter_<N>.pth`` (one) and the ``last_checkpoint`` pointer."""

    def __init__(self, work_dir: Path, keep: int = 3, best_metric: str = "mIoU") -> None:
        if keep < 1:
            raise TrainingError(f"--keep must be at least 1, got {keep}")
        self.work_dir = Path(work_dir)
        self.keep = int(keep)
        self.best_metric = best_metric

    def iteration_checkpoints(self) -> List[Tuple[int, Path]]:
        found = []
        if self.work_dir.is_dir():
            for path in self.work_dir.iterdir():
                match = _ITER_RE.match(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def best_checkpoints(self) -> List[Path]:
        if not self.work_dir.is_dir():
            return []
        return sorted(p for p in self.work_dir.iterdir() if _BEST_RE.match(p.name))

    def latest(self) -> Optional[Path]:
        """The checkpoint ``last_checkpoint`` names, or else the highest ``iter_<N>.pth``."""
        pointer = self.work_dir / LAST_CHECKPOINT
        if pointer.is_file():
            name = pointer.read_text().strip()
            path = Path(name) if os.path.isabs(name) else self.work_dir / name
            if path.is_file():
                return path
        found = self.iteration_checkpoints()
        return found[-1][1] if found else None

    def save(self, state: Mapping[str, Any], iteration: int) -> Path:
        path = self.work_dir / f"iter_{iteration}.pth"
        atomic_torch_save(dict(state), path)
        atomic_write(self.work_dir / LAST_CHECKPOINT, lambda f: f.write(f"{path.name}\n".encode()), fsync=True)
        for _, old in self.iteration_checkpoints()[:-self.keep]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def save_best(self, state: Mapping[str, Any], iteration: int, copy_of: Optional[Path] = None) -> Path:
        """Write ``best_<metric>_iter_<iteration>.pth`` (a copy of ``copy_of`` when given) and
        remove the previous best."""
        path = self.work_dir / f"best_{self.best_metric}_iter_{iteration}.pth"
        if copy_of is not None and copy_of.is_file():
            with open(copy_of, "rb") as src:
                atomic_write(path, lambda dst: shutil.copyfileobj(src, dst, 1 << 22), fsync=True)
        else:
            atomic_torch_save(dict(state), path)
        for old in self.best_checkpoints():
            if old != path:
                old.unlink(missing_ok=True)
        return path


def read_training_checkpoint(path: Path) -> Dict[str, Any]:
    from ..checkpoint.safe_load import safe_load

    checkpoint = safe_load(path)
    required = ("state_dict", "optimizer", "scheduler", "iteration", "rng", "sampler")
    missing = [k for k in required if not isinstance(checkpoint, Mapping) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a knet training checkpoint (missing {', '.join(missing)}); "
                              "use --load-from to start a new run from its weights")
    return dict(checkpoint)


def load_for_finetuning(model: nn.Module, path: PathLike,
                        class_dependent_keys: Tuple[str, ...] = CLASS_DEPENDENT_KEYS) -> List[str]:
    """Load the weights of ``path`` into ``model`` for fine-tuning. When the checkpoint has another
    number of classes, exactly ``class_dependent_keys`` (the task's) keep the model's fresh
    initialisation; every other tensor must match by name and shape. Returns the re-initialised keys."""
    from ..checkpoint import load_state_dict, read_checkpoint

    # any checkpoint kind; read_checkpoint names a missing or unreadable file
    state = dict(read_checkpoint(path)["state_dict"])
    own = model.state_dict()
    reinit = [k for k in class_dependent_keys if k in own and k in state and state[k].shape != own[k].shape]
    for key in reinit:  # keep the model's fresh initialisation of the class-dependent tensors
        state[key] = own[key]
    load_state_dict(model, state, strict=True, source=f"--load-from {path}")
    return reinit
