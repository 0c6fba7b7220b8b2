"""``knet demo``: K-Net end to end on a fresh machine, with nothing to download.

    knet demo                     # semantic segmentation (the default), into demo_out/semantic
    knet demo --task panoptic     # panoptic: things and stuff, into demo_out/panoptic
    knet demo --task instance     # instance: the things alone, into demo_out/instance

Each run records the files it writes in ``<out-dir>/.knet-demo.json``; a later run in the same
folder replaces those and nothing else, and refuses a folder holding other files unless
``--overwrite``.

1. generates a small dataset of synthetic scenes: for ``semantic`` a textured background and
   objects of three other textures and shapes (:mod:`knet.data.synthetic`, folder layout); for
   ``panoptic`` and ``instance`` scenes of sky, grass and walls with discs, boxes and triangles
   written in COCO's panoptic and instance formats (:mod:`knet.data.synthetic_coco`);
2. trains the task's ``-tiny`` K-Net on it from scratch on the CPU (two to four minutes on two
   cores) with a fixed seed, validating as it goes;
3. evaluates it on the held-out scenes (the ``knet test`` pipeline and metrics: mIoU, PQ or
   mask AP);
4. segments held-out scenes into result files and overlays, each instance in its own colour (the
   ``knet predict`` code);
5. writes ``curves.png`` (loss and the validation metric), ``metrics.json``, ``gallery.png``
   (image | ground truth | prediction), the trained model as a native directory, and
   ``report.md`` describing it all, then prints where everything is.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

import numpy as np

from ..errors import KnetError
from ..utils.atomic import atomic_write_text
from . import options

PRESET = "knet-r50-fcn-tiny"
NUM_CLASSES = 4
DEMO_ROOT = Path("demo_out")  # each task's default folder lies under it
EXPECTED_MIOU = 80.0  # what the default semantic run reaches comfortably (about 90%)

# What the generated COCO scenes' classes look like (knet.data.synthetic_coco).
COCO_TOY_LOOKS = {
    "disc": "red disc with light rings",
    "box": "blue rotated rectangle with diagonal stripes",
    "triangle": "yellow triangle with dark dots",
    "sky": "light-blue gradient, top",
    "grass": "green noise with vertical streaks, bottom",
    "wall": "brown bricks, a band at one side",
}


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo of one task trains and how: the preset, the generated data, the defaults of
    the run and what it is expected to reach (the task's best metric, percent)."""

    preset: str
    dataset_kind: str
    generate: Callable[["DemoSettings", Path], None]
    looks: Callable[[int, str], str]  # (label, class name) -> what its scenes look like
    overrides: Callable[["DemoSettings"], Dict[str, Any]]
    expected: float
    iters: int
    num_train: int
    num_val: int
    image_size: int
    batch_size: int
    lr: float
    min_image_size: int  # the smallest scenes the generator makes
    threads: Optional[int] = None  # CPU threads of torch (None: torch's choice)


def _semantic_data(settings: "DemoSettings", root: Path) -> None:
    from ..data.synthetic import make_synthetic_dataset

    size = (settings.image_size, settings.image_size)
    make_synthetic_dataset(root, num_classes=NUM_CLASSES, num_train=settings.num_train, num_val=settings.num_val,
                           size=size, seed=settings.seed)


def _coco_data(settings: "DemoSettings", root: Path) -> None:
    from ..data.synthetic_coco import make_synthetic_coco

    make_synthetic_coco(root, num_train=settings.num_train, num_val=settings.num_val,
                        size=(settings.image_size, settings.image_size), seed=settings.seed)


def _schedule(settings: "DemoSettings") -> Dict[str, Any]:
    """A short warm-up, one lr decay step at 80%, validation four or five times a run."""
    iters = settings.iters
    return {
        "train.iters": iters,
        "train.batch_size": settings.batch_size,
        "train.lr": settings.lr,
        "train.warmup_iters": max(1, min(30, iters // 10)),
        "train.milestones": (max(1, int(iters * 0.8)),),
        "train.val_interval": max(1, iters // 5),
        "train.checkpoint_interval": iters,
        "train.log_interval": max(1, min(25, iters // 10)),
    }


def _semantic_overrides(settings: "DemoSettings") -> Dict[str, Any]:
    """The tiny preset's recipe scaled to the toy problem: square crops of the scene size (random
    resize by 0.5..2 around it), batch 4, AdamW at lr 1e-3."""
    size = settings.image_size
    return {"num_classes": NUM_CLASSES, "data.crop_size": (size, size), "data.train_scale": (size, size),
            "data.test_scale": (size, size), **_schedule(settings)}


def _mask_overrides(settings: "DemoSettings") -> Dict[str, Any]:
    """The panoptic/instance tiny preset's recipe for training from scratch on small scenes: every
    backbone stage trains (nothing frozen, BatchNorm statistics updated: there are no ImageNet
    weights to keep) at the full lr, scenes at their own size and flipped, iterations instead of
    COCO's epochs. The head is twice as wide as the preset's (whose widths are those of the golden
    files), with twice its proposals: 64 channels find the things of the toy scenes, 32 hardly do,
    and 20 proposals for up to 5 things learn faster than 10."""
    size = settings.image_size
    return {"backbone.frozen_stages": -1, "backbone.norm_eval": False, "train.backbone_lr_mult": 1.0,
            "neck.out_channels": 64, "kernel_head.pos_num_feats": 32, "kernel_update.updator_channels": 64,
            "kernel_update.feedforward_channels": 128, "kernel_head.num_proposals": 20,
            "postprocess.max_per_img": 20,
            "data.test_scale": (size, size), "data.train_scales": [[size, size]], "train.epochs": None,
            **_schedule(settings)}


RECIPES: Dict[str, DemoRecipe] = {
    "semantic": DemoRecipe(PRESET, "folder", _semantic_data, lambda label, name: _texture(label),
                           _semantic_overrides, EXPECTED_MIOU, iters=300, num_train=64, num_val=16, image_size=256,
                           batch_size=4, lr=1e-3, min_image_size=32),
    "panoptic": DemoRecipe("knet-r50-fpn-panoptic-tiny", "coco_panoptic", _coco_data,
                           lambda label, name: COCO_TOY_LOOKS.get(name, ""), _mask_overrides, 50.0, iters=1000,
                           num_train=64, num_val=16, image_size=128, batch_size=4, lr=1e-3, min_image_size=48,
                           threads=1),
    "instance": DemoRecipe("knet-r50-fpn-instance-tiny", "coco_instance", _coco_data,
                           lambda label, name: COCO_TOY_LOOKS.get(name, ""), _mask_overrides, 30.0, iters=1000,
                           num_train=64, num_val=16, image_size=128, batch_size=4, lr=1e-3, min_image_size=48,
                           threads=1),
}
# The mask recipes run on one thread: their tensors are small, and on a 2-core machine whose other
# core is busy a second OpenMP thread stalls every operation.


def _texture(label: int) -> str:
    from ..data.synthetic import TEXTURES

    return TEXTURES[label % len(TEXTURES)]


@dataclass
class DemoSettings:
    """The demo's knobs; None takes the task's default (:data:`RECIPES`), the one ``make demo``
    runs."""

    out_dir: Optional[Path] = None  # None: DEMO_ROOT/<task>
    task: str = "semantic"
    iters: Optional[int] = None
    seed: int = 0
    num_train: Optional[int] = None
    num_val: Optional[int] = None
    num_shown: int = 6
    image_size: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    device: str = "auto"
    threads: Optional[int] = None
    quiet: bool = False
    overwrite: bool = False

    @property
    def recipe(self) -> DemoRecipe:
        if self.task not in RECIPES:
            raise KnetError(f"--task {self.task!r}: valid tasks are {', '.join(RECIPES)}")
        return RECIPES[self.task]

    def resolved(self) -> "DemoSettings":
        """These settings with every None replaced by the task's default."""
        recipe = self.recipe
        defaults = {name: getattr(recipe, name) for name in ("iters", "num_train", "num_val", "image_size",
                                                             "batch_size", "lr", "threads")}
        defaults["out_dir"] = DEMO_ROOT / self.task
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def config_overrides(self) -> Dict[str, Any]:
        """The preset's config overrides of this run (see the recipes)."""
        return self.recipe.overrides(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=tuple(RECIPES), default="semantic",
                        help="what to learn: semantic (default), panoptic or instance segmentation")
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help=f"output folder (default {DEMO_ROOT}/TASK); a later run replaces only the files an "
                             "earlier demo recorded there")
    parser.add_argument("--overwrite", action="store_true",
                        help="run in a folder that holds other files: files with the demo's names are replaced, "
                             "the rest is kept")
    parser.add_argument("--iters", type=int, default=None, metavar="N",
                        help="training iterations (default 300 semantic, 1000 panoptic / instance)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="random seed of the data and the training (default 0)")
    parser.add_argument("--num-train", type=int, default=None, metavar="N", help="training scenes (default 64)")
    parser.add_argument("--num-val", type=int, default=None, metavar="N", help="held-out scenes (default 16)")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="side of the square scenes and training crops (default 256 semantic, 128 panoptic / "
                             "instance)")
    parser.epilog = ("--threads defaults to 1 for the panoptic and instance demos: their tensors are small, and more "
                     "threads would wait on each other.")
    options.add_device(parser)
    options.add_threads(parser)
    options.add_quiet(parser)


def _say(settings: DemoSettings, text: str) -> None:
    if not settings.quiet:
        print(text, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _check(settings: DemoSettings) -> None:
    for name, value, low in (("--iters", settings.iters, 1), ("--num-train", settings.num_train, 1),
                             ("--num-val", settings.num_val, 1),
                             ("--image-size", settings.image_size, settings.recipe.min_image_size)):
        if value < low:
            raise KnetError(f"{name} must be at least {low}, got {value}")
    if settings.threads is not None and settings.threads < 1:
        raise KnetError(f"--threads must be at least 1, got {settings.threads}")
    out = settings.out_dir
    if out.exists() and not out.is_dir():
        raise KnetError(f"--out-dir {out}: exists and is not a folder")


# What a demo run writes into its folder: a run deletes these only where a manifest says a demo
# wrote them, or with --overwrite. Scenes are named NNNN (folder layout) or by their 12-digit COCO
# image id.
_SCENE = "[0-9][0-9][0-9][0-9]"
_COCO_SCENE = "[0-9]" * 12
_DEMO_FILES = (
    "report.md", "metrics.json", "curves.png", "gallery.png", "model/model.safetensors", "model/config.json",
    "train/iter_*.pth", "train/best_*_iter_*.pth", "train/last_checkpoint", "train/log.jsonl",
    "train/config.json", "train/tb/events.*", "data/classes.txt", "data/palette.txt",
    *(f"data/{kind}/{split}/{_SCENE}.png" for kind in ("images", "masks") for split in ("train", "val")),
    *(f"data/{split}/{_COCO_SCENE}.jpg" for split in ("train", "val")),
    *(f"data/annotations/panoptic_{split}/{_COCO_SCENE}.png" for split in ("train", "val")),
    *(f"data/annotations/{kind}_{split}.json" for kind in ("panoptic", "instances") for split in ("train", "val")),
    *(f"predictions/{name}{suffix}" for name in (_SCENE, _COCO_SCENE) for suffix in (".png", "_overlay.png", ".json")),
)
# The demo's record of the files it wrote in its folder.
MANIFEST = ".knet-demo.json"


def _files_under(out: Path) -> List[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink())


def _is_demo_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _DEMO_FILES)


def _claim_out_dir(out: Path, overwrite: bool) -> List[str]:
    """Make ``out`` ready for a run; returns the files in it that are not the demo's (kept).

    A folder holding only what an earlier demo recorded in its manifest (or, for a run that
    stopped before writing it, the demo's own file names) is cleared of those files. Anything else
    there is refused, unless ``overwrite``: then the files with the demo's names are replaced and
    the rest is left alone."""
    present = [name for name in _files_under(out) if name != MANIFEST]
    manifest_path = out / MANIFEST
    recorded: Optional[Set[str]] = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            recorded = set(manifest["files"]) if manifest.get("complete") else {n for n in present if _is_demo_file(n)}
        except (ValueError, KeyError, TypeError):
            raise KnetError(f"{manifest_path}: not a knet demo manifest; remove it or choose another "
                            "--out-dir") from None
    ours = recorded if recorded is not None else set()
    if overwrite:
        ours |= {n for n in present if _is_demo_file(n)}
    foreign = [name for name in present if name not in ours]
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise KnetError(f"--out-dir {out} holds files the demo did not write ({shown}); choose another folder "
                        "or pass --overwrite (replaces the demo's own file names, keeps the rest)")
    for name in sorted(ours & set(present)):
        (out / name).unlink()
    _write_manifest(out, complete=False, files=[])
    return foreign


def _write_manifest(out: Path, complete: bool, files: List[str]) -> None:
    atomic_write_text(out / MANIFEST, json.dumps({"complete": complete, "files": files}, indent=1) + "\n")


GALLERY_COLUMNS = ("image", "ground truth", "prediction")


def _gallery_header(width: int, column_width: int, gap: int) -> np.ndarray:
    """A white band naming the gallery's columns."""
    import cv2

    header = np.full((22, width, 3), 255, np.uint8)
    for index, title in enumerate(GALLERY_COLUMNS):
        (unit_w, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
        scale = min(0.45, 0.95 * column_width / unit_w)  # each title stays within its column
        (text_w, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = index * (column_width + gap) + max(0, (column_width - text_w) // 2)
        cv2.putText(header, title, (x, 15), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return header


def _gallery(task: Any, config: Any, images: List[np.ndarray], truths: List[Any], predictions: List[Any]) -> np.ndarray:
    """A header naming the columns, then one row per scene: the image | the ground truth | the
    prediction, both drawn over the image."""
    gap = 6
    rows = []
    for image, truth, prediction in zip(images, truths, predictions):
        spacer = np.full((image.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([image, spacer, task.visualize(image, truth, config, 0.6), spacer,
                                    task.visualize(image, prediction, config, 0.6)], axis=1))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    header = _gallery_header(rows[0].shape[1], images[0].shape[1], gap)
    return np.concatenate([header] + rows[:-1], axis=0)


def _numpy(prediction: Any) -> Any:
    """A label-map tensor as a numpy array (what the semantic drawing takes); anything else as it is."""
    return prediction.cpu().numpy() if hasattr(prediction, "cpu") and hasattr(prediction, "numpy") else prediction


def _headline(task: Any, metrics: Dict[str, Any]) -> str:
    """``**PQ 52.10%** (SQ 80.00%, RQ 63.00%, ...)``: the best metric and the other summary ones."""
    def value(key: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else f"{v:.2f}%"

    others = [f"{key} {value(key)}" for key in task.summary_metrics if key != task.best_metric]
    return f"**{task.best_metric} {value(task.best_metric)}**" + (f" ({', '.join(others)})" if others else "")


def _report(settings: DemoSettings, task: Any, metrics: Dict[str, Any], info: Dict[str, Any],
            files: Dict[str, str]) -> str:
    recipe = settings.recipe
    lines = [
        "# knet demo",
        "",
        f"A `{recipe.preset}` K-Net ({task.name} segmentation) trained from scratch for {settings.iters} "
        f"iterations (batch {settings.batch_size}, AdamW lr {settings.lr:g}, seed {settings.seed}) on "
        f"{info['device']} with {info['threads']} thread(s) in {_duration(info['train_seconds'])}, on "
        f"{settings.num_train} generated {settings.image_size}x{settings.image_size} scenes of "
        f"{info['num_classes']} classes, and evaluated on {settings.num_val} held-out scenes with the `knet test` "
        "pipeline.",
        "",
        _headline(task, metrics),
        "",
    ]
    per_class = metrics.get("per_class") or {}
    if per_class:
        first = next(iter(per_class.values()))
        # The per-class percentages (IoU, Acc; PQ, SQ, RQ); counts and flags stay in metrics.json.
        columns = [key for key, v in first.items() if v is None or type(v) is float]
        lines += ["| class | looks like | " + " | ".join(f"{c} (%)" for c in columns) + " |",
                  "|---|---|" + "---:|" * len(columns)]
        for label, (name, values) in enumerate(per_class.items()):
            cells = ["n/a" if values.get(c) is None else f"{values[c]:.2f}" for c in columns]
            lines.append(f"| {name} | {recipe.looks(label, name)} | " + " | ".join(cells) + " |")
    lines += ["", "## Files", "", "| path | what |", "|---|---|"]
    for path, what in files.items():
        lines.append(f"| `{path}` | {what} |")
    lines += [
        "",
        "## Curves",
        "",
        f"![loss and {task.best_metric}](curves.png)",
        "",
        "## Held-out scenes (left to right: image, ground truth, prediction)",
        "",
        "![gallery](gallery.png)",
        "",
        "## Next",
        "",
        "```",
        f"knet predict --checkpoint {settings.out_dir / 'model'} IMAGES... --out-dir predictions",
        f"knet test --checkpoint {settings.out_dir / 'model'} --data-root {settings.out_dir / 'data'} --split val",
        f"knet benchmark --checkpoint {settings.out_dir / 'model'} --size {settings.image_size} --json",
        "```",
        "",
    ]
    return "\n".join(lines)


def run_demo(settings: DemoSettings) -> Dict[str, Any]:
    """Run the demo (see the module docstring); returns the contents of ``metrics.json``. Torch's
    thread count is restored afterwards."""
    import torch

    settings = settings.resolved()
    _check(settings)
    threads = torch.get_num_threads()
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        return _run_demo(settings)
    finally:
        torch.set_num_threads(threads)


def _run_demo(settings: DemoSettings) -> Dict[str, Any]:
    import torch

    from ..checkpoint import save_pretrained
    from ..data.datasets import build_dataset
    from ..data.io import write_image
    from ..engine.curves import plot_log
    from ..engine.evaluation import run_evaluation, write_json
    from ..engine.training import TrainOptions, train
    from ..inference.files import PredictItem, predict
    from ..inference.segmenter import Segmenter
    from ..presets import get_config
    from ..tasks import get_task

    recipe = settings.recipe
    start = time.perf_counter()
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    foreign = set(_claim_out_dir(out, settings.overwrite))
    data_dir, work_dir, model_dir = out / "data", out / "train", out / "model"
    pred_dir = out / "predictions"

    cfg = get_config(recipe.preset, settings.config_overrides())
    task = get_task(cfg.task)
    _say(settings, f"[1/5] generating {settings.num_train} training and {settings.num_val} held-out "
                   f"{settings.image_size}x{settings.image_size} scenes in {data_dir}")
    recipe.generate(settings, data_dir)
    train_set = build_dataset(recipe.dataset_kind, data_dir, "train", **task.dataset_options(cfg, training=True))
    val_set = build_dataset(recipe.dataset_kind, data_dir, "val", **task.dataset_options(cfg, training=False))

    _say(settings, f"[2/5] training {recipe.preset} from scratch for {settings.iters} iterations on "
                   f"{settings.device} (work dir {work_dir})")
    train_start = time.perf_counter()
    result = train(cfg, TrainOptions(work_dir=work_dir, data_root=data_dir, dataset=recipe.dataset_kind,
                                     device=settings.device, seed=settings.seed, workers=0, keep=1,
                                     quiet=settings.quiet, progress=False if settings.quiet else None),
                   train_set, val_set)
    train_seconds = time.perf_counter() - train_start
    model = result.model.eval()

    _say(settings, f"[3/5] evaluating on the {len(val_set)} held-out scenes")
    metrics = run_evaluation(model, val_set, task=task, device=None).metrics
    _say(settings, task.format_metrics(metrics))

    shown = list(range(min(settings.num_shown, len(val_set))))
    _say(settings, f"[4/5] segmenting {len(shown)} held-out scenes into {pred_dir}")
    segmenter = Segmenter(model)
    paths = [Path(val_set.samples[i][0]) for i in shown]
    failures = predict(segmenter, [PredictItem(path, Path(path.stem)) for path in paths], pred_dir, opacity=0.5,
                       progress=False)
    if failures:
        raise KnetError(f"could not segment {failures[0][0]}: {failures[0][1]}")
    items = [val_set[i] for i in shown]
    images = [item["image"] for item in items]
    predictions = [_numpy(p) for p in segmenter.pipeline.predict(images)]
    truths = [task.ground_truth(item) for item in items]
    write_image(out / "gallery.png", _gallery(task, segmenter.config, images, truths, predictions))

    _say(settings, "[5/5] writing curves, metrics, the model and the report")
    plot_log(work_dir / "log.jsonl", out / "curves.png")
    save_pretrained(model, model_dir)
    summary = ", ".join(task.summary_metrics)
    files = {
        "report.md": "this report",
        "metrics.json": f"{summary} (percent) and the per-class results where the task has them, with the run's "
                        "settings",
        "curves.png": f"training loss and validation {task.best_metric} against the iteration",
        "gallery.png": "held-out scenes, left to right: image, ground truth, prediction",
        "predictions/": f"what `knet predict` writes per scene: {task.output_files}",
        "model/": "the trained model (`model.safetensors` + `config.json`) for `knet predict --checkpoint`",
        "train/": "training work dir: `log.jsonl`, `config.json`, the last and best checkpoints",
        "data/": f"the generated dataset ({recipe.dataset_kind} layout)",
    }
    info = {
        "task": task.name,
        "model": recipe.preset,
        "num_classes": int(model.config.num_classes),
        "class_names": segmenter.class_names,
        "iterations": settings.iters,
        "seed": settings.seed,
        "num_train": settings.num_train,
        "num_val": settings.num_val,
        "image_size": settings.image_size,
        "device": str(segmenter.device),
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    record = {**metrics, **info, "files": {name: str(out / name) for name in files}}
    write_json(out / "metrics.json", record)
    atomic_write_text(out / "report.md", _report(settings, task, metrics, info, files))
    _write_manifest(out, complete=True, files=[n for n in _files_under(out) if n != MANIFEST and n not in foreign])
    return record


allocator_setting = options.training_allocator


def run(args: argparse.Namespace) -> int:
    from ..tasks import get_task

    settings = DemoSettings(out_dir=Path(args.out_dir) if args.out_dir else None, overwrite=args.overwrite,
                            task=args.task, iters=args.iters, seed=args.seed,
                            num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                            device=args.device, threads=args.threads, quiet=args.quiet).resolved()
    record = run_demo(settings)
    out = settings.out_dir
    metric = get_task(record["task"]).best_metric
    value = record.get(metric)
    expected = settings.recipe.expected
    print()
    print(f"demo {metric} {'n/a' if value is None else f'{value:.2f}%'} on {settings.num_val} held-out scenes "
          f"(trained {settings.iters} iterations in {_duration(record['train_seconds'])}, "
          f"total {_duration(record['total_seconds'])})")
    if value is None or value < expected:
        print(f"note: below the {expected:.0f}% the default run reaches"
              + (" (a shortened run: raise --iters)" if settings.iters < settings.recipe.iters else ""),
              file=sys.stderr)
    print(f"report        {out / 'report.md'}")
    print(f"metrics       {out / 'metrics.json'}")
    print(f"curves        {out / 'curves.png'}")
    print(f"gallery       {out / 'gallery.png'}")
    print(f"overlays      {out / 'predictions'}/*_overlay.png")
    print(f"model         {out / 'model'}  (knet predict --checkpoint {out / 'model'} IMAGES --out-dir DIR)")
    print(f"training log  {out / 'train' / 'log.jsonl'}")
    return 0


__all__ = ["DemoRecipe", "DemoSettings", "RECIPES", "run_demo"]
