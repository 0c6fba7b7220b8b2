"""The one evaluation loop: ``knet test``, ``knet.evaluate`` and validation during training.

A task (:mod:`knet.tasks`) supplies the test pipeline and the evaluator; a model runner (a torch
model, or anything with the interface of :class:`knet.inference.pipeline.TorchRunner`) computes
the logits. Under torchrun every rank takes its share of the images (``rank, rank + W, ...``)
and the evaluator combines the statistics of all ranks, so the metrics equal a one-process run.
With ``format_dir`` the task's formatter takes the evaluator's place and writes the predictions
in the dataset's results format (``knet test --format-only``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data.transforms import Size
from ..errors import DataError, KnetError
from ..inference.pipeline import as_runner
from ..tasks import Evaluator, Task, get_task
from ..utils.atomic import atomic_write_text
from ..utils.device import resolve_device
from .distributed import DistInfo, all_gather_objects, all_reduce_sum


@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` found: the metrics dict, the evaluator holding the raw
    statistics (e.g. per-class pixel counts: ``evaluator.areas()``), the number of images
    evaluated (all ranks) and the bad items skipped (``(image path, message)``, with ``skip_bad``)."""

    metrics: Dict[str, Any]
    evaluator: Evaluator
    num_images: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)


class _SafeItems:
    """A share of a dataset whose items never raise a DataError: a bad item comes back as
    ``(index, None, message)`` so that a DataLoader worker can hand it over intact."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Tuple[int, Optional[Dict[str, Any]], Optional[str]]:
        index = self.indices[position]
        try:
            return index, self.dataset[index], None
        except DataError as err:
            return index, None, str(err)


def _batches(items: _SafeItems, batch_size: int, workers: int) -> Iterator[list]:
    """Lists of ``(index, item or None, error or None)`` in order; files are decoded by
    ``workers`` processes while the model runs."""
    if workers <= 0:
        for start in range(0, len(items), batch_size):
            yield [items[i] for i in range(start, min(start + batch_size, len(items)))]
        return
    from torch.utils.data import DataLoader

    yield from DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list,
                          persistent_workers=False)


def _image_path(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"item {index}"


def _check_dataset(config: Any, dataset: Any, task: Task, need_labels: bool = True) -> None:
    from ..data.datasets import DATASETS

    kind = getattr(dataset, "name", None)
    if kind in DATASETS and kind not in task.dataset_kinds:
        raise DataError(f"{task.name} models are evaluated on {' or '.join(task.dataset_kinds)} datasets, "
                        f"not on {kind}")
    if dataset.num_classes != config.num_classes:
        raise DataError(
            f"the model predicts {config.num_classes} classes but the dataset has {dataset.num_classes}"
            + (f" ({dataset.root / 'classes.txt'})" if getattr(dataset, "name", "") == "folder" else ""))
    if need_labels and not dataset.has_labels:
        where = getattr(dataset, "root", "the dataset")
        hint = (f"expected masks/{getattr(dataset, 'split', '')}" if kind == "folder"
                else "--format-only writes the predictions of a split without labels")
        raise DataError(f"{where}: the dataset has no labels to evaluate against ({hint})")


def run_evaluation(model: Any, dataset: Any, *, task: Optional[Task] = None, mode: str = "whole",
                   tta: bool = False, batch_size: int = 1, device: Union[str, torch.device, None] = "auto",
                   workers: int = 0, crop_size: Optional[Size] = None, stride: Optional[Size] = None,
                   test_scale: Optional[Size] = None, skip_bad: bool = False,
                   show_dir: Optional[Union[str, os.PathLike]] = None, opacity: float = 0.5,
                   progress: bool = False, dist_info: Optional[DistInfo] = None,
                   format_dir: Optional[Union[str, os.PathLike]] = None,
                   compile: bool = False, precision: str = "fp32") -> EvaluationResult:
    """Evaluate ``model`` (a torch model or a model runner) on ``dataset``; see :func:`evaluate`.

    ``task`` defaults to the model config's. ``dist_info``: this process's place in a torchrun
    run (its process group initialised); None or one process evaluates everything. Call it on
    every rank: each returns the same metrics. ``format_dir``: write the predictions there in the
    dataset's results format (:meth:`knet.tasks.Task.formatter`; labels are not needed) instead of
    scoring them; the metrics are then the formatter's ``{"files", "num_images"}``. ``compile``:
    run a torch model through ``torch.compile``, ``precision`` in ``fp32``, ``bf16`` or ``fp16``
    (:class:`~knet.inference.pipeline.TorchRunner`).
    """
    from ..utils.progress import ProgressBar

    if batch_size < 1:
        raise KnetError(f"batch size must be at least 1, got {batch_size}")
    if device is not None and isinstance(model, nn.Module):
        model.to(resolve_device(device))
    # an inference copy of a torch model, where it now is
    runner = as_runner(model, compile=compile, precision=precision)
    config = runner.config
    task = task or get_task(config.task)
    info = dist_info or DistInfo()
    _check_dataset(config, dataset, task, need_labels=format_dir is None)
    pipeline = task.pipeline(runner, mode=mode, crop_size=crop_size, stride=stride, test_scale=test_scale, tta=tta)
    evaluator = (task.formatter(config, dataset, Path(format_dir)) if format_dir is not None
                 else task.evaluator(config, dataset, device=pipeline.device))
    # The pictures use the dataset's class names and colours (a model may carry none of its own).
    pictures_config = config.replace(class_names=list(dataset.class_names),
                                     palette=[list(c) for c in dataset.palette]) if show_dir is not None else None
    items = _SafeItems(dataset, range(info.rank, len(dataset), info.world_size))
    skipped: List[Tuple[str, str]] = []
    evaluated = 0
    with ProgressBar(total=len(items), desc="test", enabled=progress and info.is_main) as bar:
        for batch in _batches(items, batch_size, workers):
            good = []
            for index, item, error in batch:
                if error is None:
                    good.append((index, item))
                elif skip_bad:
                    skipped.append((_image_path(dataset, index), error))
                else:
                    raise DataError(error)
            if good:
                predictions = pipeline.predict([item["image"] for _, item in good])
                evaluator.process([item for _, item in good], predictions)
                if show_dir is not None:
                    for (index, item), prediction in zip(good, predictions):
                        _write_picture(Path(show_dir), task, pictures_config, dataset, index, item, prediction,
                                       opacity)
                evaluated += len(good)
            bar.update(len(batch))
    metrics = evaluator.evaluate(info)
    if info.distributed:
        evaluated = int(all_reduce_sum(torch.tensor([evaluated]), info).item())
        skipped = [entry for rank_skipped in all_gather_objects(skipped, info) for entry in rank_skipped]
    return EvaluationResult(metrics=metrics, evaluator=evaluator, num_images=evaluated, skipped=skipped)


def _write_picture(show_dir: Path, task: Task, config: Any, dataset: Any, index: int, item: Dict[str, Any],
                   prediction: Any, opacity: float) -> None:
    """``show_dir/<image name>.png``: the ground truth (left) and the prediction (right) over the
    image, written atomically."""
    import numpy as np

    from ..data.io import write_image

    image = item["image"]
    prediction = prediction.cpu().numpy() if isinstance(prediction, torch.Tensor) else prediction
    panels = [task.visualize(image, prediction, config, opacity)]
    truth = task.ground_truth(item)
    if truth is not None:
        panels.insert(0, task.visualize(image, truth, config, opacity))
    name = dataset.relative_name(index) if hasattr(dataset, "relative_name") else f"{index:06d}"
    write_image(show_dir / Path(name).with_suffix(".png"), np.concatenate(panels, axis=1))


def evaluate(model: nn.Module, dataset: Any, *, mode: str = "whole", tta: bool = False, batch_size: int = 1,
             device: Union[str, torch.device, None] = "auto", workers: int = 0,
             crop_size: Optional[Size] = None, stride: Optional[Size] = None,
             test_scale: Optional[Size] = None, skip_bad: bool = False,
             show_dir: Optional[Union[str, os.PathLike]] = None, progress: bool = False,
             compile: bool = False, precision: str = "fp32") -> Dict[str, Any]:
    """Evaluate a model on a dataset exactly as ``knet test`` does.

    Args:
        model: a ``KNet`` (``knet.build_model`` + ``knet.load_checkpoint``, or
            ``knet.checkpoint.load_model``); it is moved to ``device`` and run in eval mode.
        dataset: from :func:`knet.data.datasets.build_dataset` (semantic models: ADE20K or a
            folder dataset; panoptic / instance models: COCO panoptic / instance); its number of
            classes must be the model's.
        mode: ``whole`` or ``slide`` (sliding window of ``crop_size`` every ``stride``,
            both (width, height)).
        tta: multi-scale (0.5 ... 1.75) + flip instead of the single scale.
        batch_size: images per step; images of equal resized size run as one batch, which
            gives the batch-of-one result up to float rounding (labels can differ at near-ties).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, a torch.device, or None to
            leave the model where it is.
        workers: DataLoader worker processes reading the files (0: in this process).
        test_scale: (width, height) to fit instead of the config's ``data.test_scale``.
        skip_bad: skip unreadable or inconsistent files instead of raising DataError (use
            :func:`run_evaluation` to get the list of skipped files).
        show_dir: write ground-truth | prediction overlays there, one PNG per image.
        progress: draw a progress bar on stderr.
        compile: run the model through ``torch.compile`` (compiles on the first image of each
            size: worth it for long runs).
        precision: ``fp32``, ``bf16`` (CPUs with AMX or AVX512-BF16, recent GPUs) or ``fp16`` (GPUs)
            for the convolutions and matrix products (:mod:`knet.utils.precision`).

    Returns:
        The task's metrics, percent rounded to 2 decimals, None where undefined; semantic:
        ``{"aAcc", "mIoU", "mAcc", "per_class": {name: {"IoU", "Acc"}}}``; panoptic: ``{"PQ",
        "SQ", "RQ", "PQ_th", ..., "RQ_st", "per_class": {name: {"PQ", "SQ", "RQ", ...}}}``;
        instance: ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``.
    """
    return run_evaluation(model, dataset, mode=mode, tta=tta, batch_size=batch_size, device=device,
                          workers=workers, crop_size=crop_size, stride=stride, test_scale=test_scale,
                          skip_bad=skip_bad, show_dir=show_dir, progress=progress, compile=compile,
                          precision=precision).metrics


def write_json(path: Union[str, os.PathLike], data: Dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temp file + rename): the file is either complete or
    absent."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
