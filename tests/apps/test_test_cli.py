"""``knet test`` end to end on generated datasets (ADE20K and folder layouts), whole, slide and
``--tta``, outputs (--out, --show-dir), and every bad input (one-line error, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import knet
from knet.utils.device import cpu_has_native_bf16
from knet.cli import main
from knet.data.datasets import build_dataset
from knet.engine.evaluation import run_evaluation
from tests.conftest import golden_path

SCALE = (64, 32)


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_ade20k(root: Path, n=3) -> Path:
    """ROOT/ADEChallengeData2016/{images,annotations}/validation with labels 0..150."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (30, 40) if i % 2 == 0 else (24, 36)
        name = f"ADE_val_{i + 1:08d}"
        (base / "images" / "validation").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(rng, h, w)).save(base / "images" / "validation" / f"{name}.jpg")
        Image.fromarray(rng.integers(0, 151, (h, w)).astype(np.uint8)).save(
            base / "annotations" / "validation" / f"{name}.png")
    return base


def make_folder(root: Path, n=3, num_classes=3, ignored_row=True) -> Path:
    rng = np.random.default_rng(1)
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(num_classes)))
    for i in range(n):
        h, w = (30, 40) if i % 2 == 0 else (20, 20)
        Image.fromarray(_rgb(rng, h, w)).save(root / "images" / "val" / f"im{i}.png")
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        if ignored_row:
            label[0] = 255
        Image.fromarray(label).save(root / "masks" / "val" / f"im{i}.png")
    return root


def _native(directory: Path, num_classes: int) -> Path:
    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=num_classes, **{"data.test_scale": SCALE})
    knet.save_pretrained(model, directory)
    return directory


@pytest.fixture(scope="module")
def ade_model(tmp_path_factory) -> Path:
    return _native(tmp_path_factory.mktemp("m") / "ade", 150)


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory) -> Path:
    return _native(tmp_path_factory.mktemp("m") / "folder", 3)


def _test(*args) -> int:
    return main(["test", "--workers", "0", "--device", "cpu", *map(str, args)])


# ---- runs ------------------------------------------------------------------------------------
def test_ade20k_layout(tmp_path, ade_model, capsys):
    make_ade20k(tmp_path / "data")
    out = tmp_path / "metrics.json"
    assert _test("--checkpoint", ade_model, "--data-root", tmp_path / "data", "--out", out) == 0
    captured = capsys.readouterr()
    assert "per-class results:" in captured.out and "| wall" in captured.out and "summary:" in captured.out
    assert "3 images, 150 classes, single scale, whole inference on cpu" in captured.out
    assert "test:" in captured.err  # the progress bar
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"aAcc", "mIoU", "mAcc", "per_class"}
    assert len(metrics["per_class"]) == 150 and set(metrics["per_class"]["wall"]) == {"IoU", "Acc"}
    # The same as the Python API.
    model = knet.load(ade_model)
    dataset = build_dataset("ade20k", tmp_path / "data")
    assert knet.evaluate(model, dataset, device="cpu") == metrics


@pytest.mark.parametrize("extra, kwargs", [
    ([], {}),
    (["--mode", "slide", "--crop-size", "24", "--stride", "16,12"],
     {"mode": "slide", "crop_size": (24, 24), "stride": (16, 12)}),
    (["--tta", "--batch-size", "2"], {"tta": True}),
])
def test_folder_layout_whole_slide_tta(tmp_path, folder_model, capsys, extra, kwargs):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "m.json"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", out, "--quiet", *extra) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics["per_class"]) == ["class0", "class1", "class2"]
    expected = run_evaluation(knet.load(folder_model), build_dataset("folder", root), device="cpu", **kwargs)
    assert metrics == expected.metrics
    assert capsys.readouterr().err == ""  # --quiet: no progress bar


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no AMX or AVX512-BF16")
def test_precision_bf16_gives_the_python_apis_bf16_metrics(tmp_path, folder_model):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "m.json"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", out, "--quiet", "--precision", "bf16") == 0
    expected = run_evaluation(knet.load(folder_model), build_dataset("folder", root), device="cpu", precision="bf16")
    assert json.loads(out.read_text()) == expected.metrics


def test_reference_checkpoint_with_model_name_and_overrides(tmp_path, capsys):
    pth = golden_path("knet-r50-fcn.tiny.pth")
    make_ade20k(tmp_path / "data", n=1)
    out = tmp_path / "m.json"
    code = _test("--model", "knet-r50-fcn-tiny", "--checkpoint", pth, "--data-root", tmp_path / "data",
                 "--dataset", "ade20k", "--split", "val", "--set", "data.test_scale=64,32", "--out", out)
    assert code == 0
    a = json.loads(out.read_text())
    code = _test("--model", "knet-r50-fcn-tiny", "--checkpoint", pth, "--data-root", tmp_path / "data",
                 "--test-scale", "64,32", "--out", out, "--workers", "1")
    assert code == 0 and json.loads(out.read_text()) == a


def test_reduce_zero_label_and_show_dir(tmp_path, folder_model, capsys):
    root = make_folder(tmp_path / "data", num_classes=4)  # mask values 0..3, 0 = ignore -> 3 classes
    (root / "classes.txt").write_text("a\nb\nc\n")
    show = tmp_path / "show"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--reduce-zero-label",
                 "--show-dir", show, "--quiet") == 0
    assert sorted(p.name for p in show.iterdir()) == ["im0.png", "im1.png", "im2.png"]
    assert np.array(Image.open(show / "im0.png")).shape == (30, 80, 3)


def test_outputs_that_would_replace_inputs_are_refused(tmp_path, folder_model, capsys):
    root = make_folder(tmp_path / "data", num_classes=3)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    (tmp_path / "masks_link").symlink_to(root / "masks" / "val")
    for extra, fragment in ((["--out", root / "classes.txt"], "would overwrite the input"),
                            (["--out", folder_model / "config.json"], "would overwrite the input"),
                            (["--show-dir", root / "images" / "val"], "would replace the inputs"),
                            (["--show-dir", tmp_path / "masks_link"], "would replace the inputs")):
        assert _test("--checkpoint", folder_model, "--data-root", root, "--quiet", *extra) == 2
        _assert_error(capsys, fragment)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


# ---- bad input -------------------------------------------------------------------------------
def _assert_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("knet test: error: ")
    for fragment in fragments:
        assert fragment in err, err
    return err


def _corrupt_image(root):
    (root / "images" / "val" / "im1.png").write_bytes(b"not a png")
    return "im1.png: cannot decode image"


def _corrupt_label(root):
    (root / "masks" / "val" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return "im1.png: cannot decode label"


def _bad_value(root):
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(root / "masks" / "val" / "im1.png")
    return "im1.png: label value 9 is neither a class (0..2) nor 255"


def _size_mismatch(root):
    Image.fromarray(np.zeros((21, 20), np.uint8)).save(root / "masks" / "val" / "im1.png")
    return "im1.png is 20x20 but its label"


def _missing_mask(root):
    (root / "masks" / "val" / "im1.png").unlink()
    return "missing mask"


@pytest.mark.parametrize("spoil", [_corrupt_image, _corrupt_label, _bad_value, _size_mismatch, _missing_mask])
def test_bad_file_stops_or_is_skipped(tmp_path, folder_model, capsys, spoil):
    root = make_folder(tmp_path / "data")
    fragment = spoil(root)
    out = tmp_path / "m.json"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", out, "--quiet") == 2
    _assert_error(capsys, fragment)
    assert not out.exists()  # nothing half-written
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", out, "--quiet", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "skipped 1 bad item(s):" in captured.err and fragment in captured.err
    assert "2 images" in captured.out and out.exists()


def test_bad_folders_and_arguments(tmp_path, folder_model, ade_model, capsys):
    root = make_folder(tmp_path / "data")
    assert _test("--checkpoint", folder_model, "--data-root", root, "--split", "test") == 2
    _assert_error(capsys, "missing split folder", "images/test")
    (root / "images" / "empty").mkdir()
    assert _test("--checkpoint", folder_model, "--data-root", root, "--split", "empty") == 2
    _assert_error(capsys, "no images in", "empty")
    assert _test("--checkpoint", ade_model, "--data-root", tmp_path / "nothing", "--dataset", "ade20k") == 2
    _assert_error(capsys, "not an ADE20K folder", "images/ and annotations/")
    base = make_ade20k(tmp_path / "ade", n=1)
    for p in (base / "images" / "validation").iterdir():
        p.unlink()
    assert _test("--checkpoint", ade_model, "--data-root", base) == 2
    _assert_error(capsys, "no .jpg images in", "validation")
    assert _test("--checkpoint", ade_model, "--data-root", root) == 2
    _assert_error(capsys, "model predicts 150 classes but the dataset has 3")
    assert _test("--checkpoint", folder_model, "--data-root", root, "--batch-size", "0") == 2
    _assert_error(capsys, "--batch-size must be at least 1")
    assert _test("--checkpoint", folder_model, "--data-root", root, "--set", "nonsense=1") == 2
    _assert_error(capsys, "unknown config key 'nonsense'")
    assert _test("--checkpoint", tmp_path / "missing.pth", "--data-root", root) == 2
    _assert_error(capsys, "missing.pth")
    with pytest.raises(SystemExit) as info:
        _test("--checkpoint", folder_model, "--data-root", root, "--test-scale", "big")
    assert info.value.code == 2
    assert "expected N or W,H" in capsys.readouterr().err


# ---- distributed and the ignore value ------------------------------------------------------------
def test_torchrun_two_processes_give_the_single_process_metrics(tmp_path, folder_model):
    from tests.conftest import run_torchrun

    root = make_folder(tmp_path / "data", n=5)
    single, distributed = tmp_path / "single.json", tmp_path / "ddp.json"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", single, "--quiet") == 0
    _, outputs = run_torchrun(["test", "--checkpoint", str(folder_model), "--data-root", str(root), "--device", "cpu",
                               "--workers", "0", "--quiet", "--out", str(distributed)], tmp_path / "logs")
    assert json.loads(distributed.read_text()) == json.loads(single.read_text())
    assert "5 images, 3 classes" in outputs[0]["stdout"] and "x 2 processes" in outputs[0]["stdout"]
    assert outputs[1]["stdout"].strip() == ""  # only rank 0 prints


def test_ignore_index_setting_applies_to_knet_test_and_validation_alike(tmp_path, folder_model):
    from knet.data.synthetic import make_synthetic_dataset
    from knet.engine.training import TrainOptions, train

    # knet test: with class 1 as the ignore value, its pixels leave the metrics (its IoU is undefined
    # unless predicted) and every other class is scored on fewer pixels.
    root = make_folder(tmp_path / "data", ignored_row=False)  # 255 is no class once 1 is the ignore value
    plain, ignoring = tmp_path / "plain.json", tmp_path / "ignoring.json"
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", plain, "--quiet") == 0
    assert _test("--checkpoint", folder_model, "--data-root", root, "--out", ignoring, "--quiet",
                 "--set", "data.ignore_index=1") == 0
    model = knet.load(folder_model, overrides={"data.ignore_index": 1})
    expected = run_evaluation(model, build_dataset("folder", root, ignore_index=1), device="cpu").metrics
    assert json.loads(ignoring.read_text()) == expected != json.loads(plain.read_text())
    assert expected["per_class"]["class1"]["Acc"] is None  # never labelled once 1 is ignored

    # Validation during training reads the same setting: its metrics are knet test's.
    data = make_synthetic_dataset(tmp_path / "toy", num_classes=3, num_train=2, num_val=2, size=(32, 32), seed=0)
    cfg = knet.get_config("knet-r50-fcn-tiny", {"data.crop_size": "32,32", "data.train_scale": "32,32",
                                                "data.test_scale": "32,32", "data.ignore_index": 1,
                                                "train.iters": 1, "train.batch_size": 1, "train.warmup_iters": 1})
    result = train(cfg, TrainOptions(work_dir=tmp_path / "run", data_root=data.root, workers=0, quiet=True))
    evaluated = run_evaluation(result.model, build_dataset("folder", data.root, "val", ignore_index=1),
                               device=None).metrics
    assert result.last_metrics == {k: evaluated[k] for k in ("aAcc", "mIoU", "mAcc")}
    assert evaluated["per_class"][data.class_names[1]]["Acc"] is None


# ---- COCO panoptic and instance ---------------------------------------------------------------
COCO_SMALL = {"data.test_scale": (64, 64), "data.train_scales": [[64, 64]], "postprocess.instance_score_thr": 0.0,
              "postprocess.overlap_thr": 0.0}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The synthetic COCO toy set (both formats), 64x64 scenes; a test split with images only."""
    import shutil

    from knet.data.synthetic_coco import make_synthetic_coco

    toy = make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=2, num_val=5, size=(64, 64), seed=0,
                              crowd_prob=0.5)
    shutil.copytree(toy.root / "val", toy.root / "test")
    data = json.loads((toy.root / "annotations" / "panoptic_val.json").read_text())
    (toy.root / "annotations" / "panoptic_image_info_test.json").write_text(
        json.dumps({"images": data["images"], "categories": data["categories"]}))
    instances = json.loads((toy.root / "annotations" / "instances_val.json").read_text())
    (toy.root / "annotations" / "image_info_test.json").write_text(
        json.dumps({"images": instances["images"], "categories": instances["categories"]}))
    return toy


@pytest.fixture(scope="module")
def coco_models(tmp_path_factory, coco):
    """A panoptic and an instance tiny model for the toy set's classes (random weights; every
    candidate segment is kept, so that predictions have segments to count)."""
    from knet.data.datasets import build_dataset
    from knet.tasks import get_task

    models = {}
    for task_name in ("panoptic", "instance"):
        task = get_task(task_name)
        dataset = build_dataset(task.dataset_kinds[0], coco.root, "val")
        config = task.adopt_classes(knet.get_config(f"knet-r50-fpn-{task_name}-tiny", COCO_SMALL), dataset)
        torch.manual_seed(0)
        models[task_name] = knet.save_pretrained(knet.build_model(config), tmp_path_factory.mktemp(task_name))
    return models


PANOPTIC_KEYS = {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "per_class"}
INSTANCE_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


@pytest.mark.parametrize("task, keys", [("panoptic", PANOPTIC_KEYS), ("instance", INSTANCE_KEYS)])
def test_coco_roots_are_read_as_the_tasks_dataset(tmp_path, coco, coco_models, capsys, task, keys):
    out = tmp_path / "metrics.json"
    assert _test("--checkpoint", coco_models[task], "--data-root", coco.root, "--split", "val", "--out", out,
                 "--show-dir", tmp_path / "show") == 0
    captured = capsys.readouterr()
    assert "summary:" in captured.out and f"5 images, {6 if task == 'panoptic' else 3} classes" in captured.out
    metrics = json.loads(out.read_text())
    assert set(metrics) == keys
    if task == "panoptic":
        assert list(metrics["per_class"]) == coco.class_names and "| Things |" in captured.out
        assert sum(row["FP"] for row in metrics["per_class"].values()) > 0  # segments were predicted
    from knet.data.datasets import build_dataset

    dataset = build_dataset(f"coco_{task}", coco.root, "val")
    assert knet.evaluate(knet.load(coco_models[task]), dataset, device="cpu") == metrics
    # --show-dir: ground truth | prediction per image, named as the image
    pictures = sorted(p.name for p in (tmp_path / "show").iterdir())
    assert pictures == [f"{i:012d}.png" for i in range(1000001, 1000006)]
    assert np.array(Image.open(tmp_path / "show" / pictures[0])).shape == (64, 128, 3)


def test_format_only_writes_cocos_results_formats(tmp_path, coco, coco_models, capsys):
    from pycocotools.coco import COCO

    from knet.data.coco import rgb_to_id

    for split in ("val", "test"):  # the test split has no labels
        pan = tmp_path / f"pan_{split}"
        assert _test("--checkpoint", coco_models["panoptic"], "--data-root", coco.root, "--split", split,
                     "--format-only", pan, "--quiet") == 0
        assert f"wrote the predictions on 5 images: {pan / 'panoptic.json'}" in capsys.readouterr().out
        data = json.loads((pan / "panoptic.json").read_text())
        assert len(data["annotations"]) == 5 and [c["id"] for c in data["categories"]] == [1, 2, 8, 5, 10, 12]
        for annotation in data["annotations"]:
            ids = rgb_to_id(np.array(Image.open(pan / "panoptic" / annotation["file_name"]).convert("RGB")))
            assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in annotation["segments_info"]}
            assert all(s["category_id"] in (1, 2, 5, 8, 10, 12) for s in annotation["segments_info"])
        assert sum(len(a["segments_info"]) for a in data["annotations"]) > 0

        ins = tmp_path / f"ins_{split}"
        assert _test("--checkpoint", coco_models["instance"], "--data-root", coco.root, "--split", split,
                     "--format-only", ins, "--quiet") == 0
        results = json.loads((ins / "segm.json").read_text())
        assert len(results) == 5 * 10  # the tiny preset keeps its 10 best (kernel, class) pairs per image
    ground_truth = COCO(str(coco.root / "annotations" / "instances_val.json"))
    loaded = ground_truth.loadRes(str(tmp_path / "ins_val" / "segm.json"))
    assert len(loaded.getAnnIds()) == 50 and set(loaded.getCatIds()) <= {1, 2, 8}

    assert _test("--checkpoint", coco_models["panoptic"], "--data-root", coco.root, "--split", "test") == 2
    _assert_error(capsys, "no labels to evaluate against")
    assert _test("--checkpoint", coco_models["panoptic"], "--data-root", coco.root, "--split", "val",
                 "--format-only", tmp_path / "x", "--out", tmp_path / "m.json") == 2
    _assert_error(capsys, "--format-only")


def test_coco_bad_image_stops_or_is_skipped_and_wrong_models_are_refused(tmp_path, coco, coco_models, folder_model,
                                                                        capsys):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco.root, root)
    (root / "val" / "000001000002.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "m.json"
    assert _test("--checkpoint", coco_models["panoptic"], "--data-root", root, "--split", "val", "--out", out,
                 "--quiet") == 2
    _assert_error(capsys, "000001000002.jpg")
    assert not out.exists()
    assert _test("--checkpoint", coco_models["panoptic"], "--data-root", root, "--split", "val", "--out", out,
                 "--quiet", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "skipped 1 bad item(s):" in captured.err and "4 images" in captured.out

    assert _test("--checkpoint", folder_model, "--data-root", coco.root, "--split", "val") == 2
    _assert_error(capsys, "holds both COCO panoptic and instance annotations")
    assert _test("--checkpoint", folder_model, "--data-root", coco.root, "--dataset", "coco_panoptic",
                 "--split", "val") == 2
    _assert_error(capsys, "semantic models are evaluated on folder or ade20k datasets")
    assert _test("--checkpoint", coco_models["instance"], "--data-root", coco.root, "--dataset", "coco_panoptic",
                 "--split", "val") == 2
    _assert_error(capsys, "instance models are evaluated on coco_instance datasets")


@pytest.mark.slow  # ~12 s on one core
def test_torchrun_two_processes_give_the_single_process_coco_metrics(tmp_path, coco, coco_models):
    from tests.conftest import run_torchrun

    for task in ("panoptic", "instance"):
        single, distributed = tmp_path / f"{task}_single.json", tmp_path / f"{task}_ddp.json"
        assert _test("--checkpoint", coco_models[task], "--data-root", coco.root, "--split", "val", "--out", single,
                     "--quiet") == 0
        _, outputs = run_torchrun(["test", "--checkpoint", str(coco_models[task]), "--data-root", str(coco.root),
                                   "--split", "val", "--device", "cpu", "--workers", "0", "--quiet", "--out",
                                   str(distributed)], tmp_path / f"logs_{task}")
        assert json.loads(distributed.read_text()) == json.loads(single.read_text())
        assert "5 images" in outputs[0]["stdout"] and "x 2 processes" in outputs[0]["stdout"]
        assert outputs[1]["stdout"].strip() == ""
    # The detections of both ranks reach the results file, in image order, as from one process.
    assert _test("--checkpoint", coco_models["instance"], "--data-root", coco.root, "--split", "val",
                 "--format-only", tmp_path / "single", "--quiet") == 0
    run_torchrun(["test", "--checkpoint", str(coco_models["instance"]), "--data-root", str(coco.root), "--split",
                  "val", "--device", "cpu", "--workers", "0", "--quiet", "--format-only", str(tmp_path / "ddp")],
                 tmp_path / "logs_format")
    single = json.loads((tmp_path / "single" / "segm.json").read_text())
    assert json.loads((tmp_path / "ddp" / "segm.json").read_text()) == single and len(single) == 50
