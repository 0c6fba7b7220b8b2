"""What a task is: everything that differs between semantic, panoptic and instance segmentation
once the model has produced its :class:`~knet.models.outputs.KNetOutput`.

The trainer, the evaluation loop, ``knet test``, ``knet predict`` and the Segmenter hold a task
and call these methods; none of them tests a task's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import KNetConfig
from ..errors import KnetError

if TYPE_CHECKING:  # no torch at import: the ONNX Runtime path of a semantic model runs without it
    import torch

    from ..inference.results import SegmentationResult
    from ..models.outputs import KNetOutput

# Averages a tensor over the processes of a distributed run (the identity in one process).
ReduceMean = Callable[["torch.Tensor"], "torch.Tensor"]


class Evaluator:
    """Accumulates predictions against the dataset's ground truth (detectron2's interface).

    ``reset()`` empties it, ``process(items, predictions)`` adds a batch (dataset items and the
    task's predictions for them, in order), ``evaluate(dist_info)`` returns the metrics dict,
    combining the statistics of every rank when the run is distributed (call it on every rank:
    each gets the same dict). Memory stays flat in the number of images.
    """

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, items: Sequence[Dict[str, Any]], predictions: Sequence[Any]) -> None:
        raise NotImplementedError

    def evaluate(self, dist_info: Any = None) -> Dict[str, Any]:
        raise NotImplementedError


class Task:
    """A segmentation task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the key of :data:`knet.tasks.TASKS` (and of ``KNetConfig.task``).
        best_metric: the metric (higher is better) that picks the best checkpoint of a run,
            named in its file name (``best_<metric>_iter_<N>.pth``).
        summary_metrics: the metrics logged after each validation.
        class_dependent_keys: state-dict keys whose first dimension is the number of classes:
            re-initialised when fine-tuning onto another class list.
        dataset_kinds: the dataset layouts (keys of ``knet.data.datasets.DATASETS``) this task
            reads, the preferred first: what ``knet test`` / ``knet train`` pick when a root holds
            several.
        has_probabilities: whether its results carry per-class probabilities (``--save-probs``).
        output_files: what a result writes per image, for ``knet predict``'s summary line.
        dense_logits: whether the model's inference output is per-pixel class logits (N, C, H, W):
            such a model also runs in sliding windows (an ONNX Runtime one too), and an int8 file of
            it is scored by the share of pixels keeping their class.
        onnx_outputs: the output names of the model's ONNX file (``knet export``), in the order
            ``model.inference`` returns them.
        onnx_check_shape: (N, 3, H, W) of the export's second parity check: a size the task's
            pipeline gives its model other than the traced example's.
    """

    name: str = ""
    best_metric: str = ""
    summary_metrics: Tuple[str, ...] = ()
    class_dependent_keys: Tuple[str, ...] = ()
    dataset_kinds: Tuple[str, ...] = ()
    has_probabilities: bool = False
    output_files: str = ""
    dense_logits: bool = False
    onnx_outputs: Tuple[str, ...] = ()
    onnx_check_shape: Tuple[int, int, int, int] = (1, 3, 64, 64)

    # ---- datasets ----------------------------------------------------------------------
    def dataset_options(self, config: Any, training: bool) -> Dict[str, Any]:
        """Keyword arguments of ``knet.data.datasets.build_dataset`` for this task's datasets
        (``training``: the training split, else an evaluation split)."""
        raise NotImplementedError

    def default_splits(self, root: Path) -> Tuple[str, str]:
        """The (training, validation) split names a dataset root holds for this task."""
        return "train", "val"

    def adopt_classes(self, config: Any, dataset: Any) -> Any:
        """``config`` with the classes of ``dataset`` (their number, names, colours, and what
        else the task's models carry per class): a model trained on it predicts its classes."""
        raise NotImplementedError

    # ---- training ----------------------------------------------------------------------
    def train_transform(self, config: Any) -> Any:
        """The training augmentation of ``config``'s recipe; :meth:`train_sample` applies it."""
        raise NotImplementedError

    def train_sample(self, item: Dict[str, Any], transform: Any, rng: np.random.Generator, config: Any) -> Any:
        """One training sample (CPU tensors) of a dataset item, augmented by ``transform`` drawing
        from ``rng`` only."""
        raise NotImplementedError

    def collate(self, samples: Sequence[Any]) -> Any:
        """A batch of :meth:`train_sample` outputs (the DataLoader's ``collate_fn``)."""
        raise NotImplementedError

    def batch_inputs(self, batch: Any, config: Any, device: torch.device) -> Tuple[torch.Tensor, Any]:
        """``(images (B, 3, H, W), targets)`` of a collated batch on ``device``: the model's input
        and what :meth:`losses` takes."""
        raise NotImplementedError

    def losses(self, output: KNetOutput, targets: Any, config: Any,
               reduce_mean: Optional[ReduceMean] = None) -> Dict[str, torch.Tensor]:
        """The named losses of a forward pass with every stage; their sum is the objective.
        ``reduce_mean`` averages a tensor over the processes of a distributed run, for losses
        normalised by a count over the whole batch (None: one process)."""
        raise NotImplementedError

    def synthetic_batch(self, config: Any, batch_size: int, height: int, width: int,
                        rng: np.random.Generator) -> Any:
        """A collated training batch (:meth:`collate`) of ``batch_size`` random samples of
        ``height x width`` drawn from ``rng``, with labels of this task's kind: what
        :func:`knet.engine.benchmark.benchmark_train` trains on."""
        raise NotImplementedError

    # ---- inference ---------------------------------------------------------------------
    def pipeline(self, model: Any, **options: Any) -> Any:
        """The test pipeline of this task for a model (or model runner): its ``predict(images)``
        maps uint8 (H, W, 3) RGB images to this task's predictions at their original sizes."""
        raise NotImplementedError

    def results(self, pipeline: Any, images: List[np.ndarray], sources: List[Optional[str]],
                config: KNetConfig, score_thr: float = 0.3) -> List[SegmentationResult]:
        """The :class:`knet.Segmenter`'s result objects of ``images`` (uint8 (H, W, 3) RGB) run
        through ``pipeline``, this task's kind of :class:`~knet.inference.results.SegmentationResult`.
        ``score_thr``: the lowest score an instance needs to be shown and written."""
        raise NotImplementedError

    # ---- evaluation --------------------------------------------------------------------
    def evaluator(self, config: Any, dataset: Any, device: Any = "cpu") -> Evaluator:
        """An empty evaluator of a model of ``config`` on ``dataset`` (whose items it receives,
        and whose classes name the results); it accumulates on ``device``."""
        raise NotImplementedError

    def formatter(self, config: Any, dataset: Any, out_dir: Path) -> Evaluator:
        """An evaluator that writes the predictions on ``dataset`` into ``out_dir`` in the
        dataset's results format instead of scoring them (``knet test --format-only``); its
        ``evaluate`` returns ``{"files": [...], "num_images": N}``. Needs no labels."""
        raise KnetError(f"writing predictions in a results format (--format-only) is not available for "
                        f"{self.name} models")

    def ground_truth(self, item: Dict[str, Any]) -> Any:
        """The labels of a dataset item as a prediction of this task (what :meth:`visualize`
        draws), or None when the item has none."""
        raise NotImplementedError

    def visualize(self, image: np.ndarray, prediction: Any, config: Any, opacity: float = 0.5) -> np.ndarray:
        """uint8 (H, W, 3): ``prediction`` drawn over ``image`` in the colours (and with the class
        names) of ``config``."""
        raise NotImplementedError

    def format_metrics(self, metrics: Dict[str, Any]) -> str:
        """The metrics as the plain-text tables ``knet test`` prints."""
        raise NotImplementedError
