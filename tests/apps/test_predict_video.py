"""``knet predict`` on videos, folders of frames and cameras: the overlay video keeps the source's
frame count, rate and size; each saved frame's files equal ``knet predict`` on that frame as an
image (semantic and panoptic); --every/--start/--end/--max-frames pick the frames; a clip that
breaks off writes what it could and exits 1; bad sources and out-dirs are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import knet
from knet.cli import main
from knet.data.io import write_image
from tests.video_helpers import decode_frames, truncate, video_info, write_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=4,
                             **{"data.test_scale": (96, 64), "class_names": ["bg", "a", "b", "c"]})
    directory = tmp_path_factory.mktemp("model") / "tiny"
    knet.save_pretrained(model, directory)
    return directory


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """clips/: walk.mp4 (24 frames, 80x48, 12 fps) and odd.avi (17 frames, 64x40, 10 fps, MJPG)."""
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "walk.mp4", frames=24, size=(80, 48), fps=12.0)
    write_clip(root / "odd.avi", frames=17, size=(64, 40), fps=10.0, fourcc="MJPG", seed=1)
    return root


def _predict(model_dir, *args) -> int:
    return main(["predict", "--checkpoint", str(model_dir), "--device", "cpu", "--quiet", *map(str, args)])


def _frames_as_images(frames, folder: Path) -> Path:
    for i, frame in enumerate(frames):
        write_image(folder / f"f_{i:06d}.png", frame)
    return folder


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_videos_keep_their_frames_rate_and_size_and_each_frame_equals_the_image(model_dir, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(model_dir, clips, "--out-dir", out, "--save-frames") == 0
    printed = capsys.readouterr()
    assert "walk_overlay.mp4 (24 frames, 12 fps)" in printed.out and "H.264" not in printed.err  # --quiet
    # The frames as images, through knet predict one at a time.
    as_images = tmp_path / "images"
    for name in ("walk.mp4", "odd.avi"):
        _frames_as_images(decode_frames(clips / name), as_images / Path(name).stem)
    assert _predict(model_dir, as_images, "--out-dir", tmp_path / "per_image") == 0
    batched = tmp_path / "batched"
    assert _predict(model_dir, clips, "--out-dir", batched, "--save-frames", "--batch-size", "4") == 0
    for stem, count, fps, size in (("walk", 24, 12.0, (80, 48)), ("odd", 17, 10.0, (64, 40))):
        assert video_info(out / f"{stem}_overlay.mp4") == (count, fps, size)
        for i in range(count):
            assert np.array_equal(_read(out / f"{stem}_{i:06d}.png"),
                                  _read(tmp_path / "per_image" / stem / f"f_{i:06d}.png")), (stem, i)
        assert not (out / f"{stem}_000000_overlay.png").exists()
        # Batched frames: the same maps up to float rounding (a batch's convolutions sum in another
        # order, which can flip a pixel whose two best classes tie to 1e-5).
        flipped = sum(int((_read(batched / f"{stem}_{i:06d}.png") != _read(out / f"{stem}_{i:06d}.png")).sum())
                      for i in range(count))
        assert flipped <= 0.001 * count * size[0] * size[1], flipped
        summary = json.loads((out / f"{stem}.json").read_text())
        assert (summary["frames"], summary["fps_in"], summary["fps_out"]) == (count, fps, fps)
        assert (summary["width"], summary["height"], summary["complete"]) == (*size, True)
        assert {c["name"] for c in summary["classes"]} <= {"bg", "a", "b", "c"}


@pytest.mark.parametrize("options, indices", [
    (["--every", "3"], list(range(0, 24, 3))),
    (["--start", "0.5", "--end", "1.0"], list(range(6, 12))),
    (["--every", "2", "--max-frames", "4"], [0, 2, 4, 6]),
])
def test_every_start_end_and_max_frames_pick_the_frames(model_dir, clips, tmp_path, options, indices):
    out = tmp_path / "out"
    assert _predict(model_dir, clips / "walk.mp4", "--out-dir", out, "--save-frames", *options) == 0
    assert sorted(p.name for p in out.glob("walk_0*.png")) == [f"walk_{i:06d}.png" for i in indices]
    every = int(options[options.index("--every") + 1]) if "--every" in options else 1
    assert video_info(out / "walk_overlay.mp4")[:2] == (len(indices), 12.0 / every)
    summary = json.loads((out / "walk.json").read_text())
    assert (summary["first_frame"], summary["last_frame"], summary["frames"]) == (indices[0], indices[-1], len(indices))


def test_a_clip_that_breaks_off_writes_what_it_could_and_exits_1(model_dir, clips, tmp_path, capsys):
    cut = truncate(write_clip(tmp_path / "cut.avi", frames=30, fourcc="MJPG"), 0.5)
    readable = len(decode_frames(cut))
    out = tmp_path / "out"
    assert _predict(model_dir, cut, clips / "walk.mp4", "--out-dir", out, "--save-frames") == 1
    err = capsys.readouterr().err
    line = f"cut.avi: the video breaks off at frame {readable} of 30"
    assert sum(line in text for text in err.splitlines()) == 2  # as it happens, and in the closing list
    assert video_info(out / "cut_overlay.mp4")[0] == readable and len(list(out.glob("cut_0*.png"))) == readable
    assert json.loads((out / "cut.json").read_text())["complete"] is False
    assert video_info(out / "walk_overlay.mp4")[0] == 24  # the other input is still written


@pytest.mark.parametrize("make, source, message", [
    (lambda d: (d / "notes.mp4").write_text("text") and d / "notes.mp4", False, "not a video OpenCV can decode"),
    (lambda d: "97", True, "camera 97 does not open"),
    (lambda d: "camera:97", False, "camera 97 does not open"),
])
def test_sources_that_do_not_open_fail_in_one_line(model_dir, tmp_path, capsys, make, source, message):
    given = make(tmp_path)
    args = ["--source", given] if source else [given]
    assert _predict(model_dir, *args, "--out-dir", tmp_path / "out") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("knet predict: skipped") and message in err[0]
    assert not list((tmp_path / "out").glob("*"))


def test_an_unwritable_out_dir_stops_before_any_work(model_dir, clips, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert _predict(model_dir, clips / "walk.mp4", "--out-dir", blocker / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "--out-dir" in err and "is not a folder" in err and len(err.splitlines()) == 1


def test_a_folder_as_video_and_its_frames_never_overwrite_the_inputs(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(3)
    shots = tmp_path / "shots"
    for i in (1, 2, 10, 3, 4, 5, 6, 7, 8):  # name order counts numbers by value: 10 comes last
        write_image(shots / f"shots_{i}.png", rng.integers(0, 256, (36, 52, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert _predict(model_dir, shots, "--as-video", "--fps", "5", "--save-frames", "--out-dir", out) == 0
    assert video_info(out / "shots_overlay.mp4") == (9, 5.0, (52, 36))
    assert _predict(model_dir, shots, "--out-dir", tmp_path / "per_image") == 0
    order = [1, 2, 3, 4, 5, 6, 7, 8, 10]
    for index, number in enumerate(order):
        assert np.array_equal(_read(out / f"shots_{index:06d}.png"),
                              _read(tmp_path / "per_image" / f"shots_{number}.png"))
    # Frames named as the per-frame files, in the out-dir itself: refused before any work.
    write_image(shots / "shots_000003.png", np.zeros((36, 52, 3), np.uint8))
    capsys.readouterr()
    assert _predict(model_dir, shots, "--as-video", "--save-frames", "--out-dir", shots) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_video_options_need_a_video(model_dir, tmp_path, capsys):
    image = tmp_path / "a.png"
    write_image(image, np.zeros((20, 20, 3), np.uint8))
    for options, message in ((["--every", "2"], "--every applies to videos"),
                             (["--as-video"], "--as-video writes a folder's images"),
                             (["--every", "0"], "--every must be at least 1")):
        assert _predict(model_dir, image, "--out-dir", tmp_path / "out", *options) == 2
        assert message in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(model_dir), "--out-dir", str(tmp_path / "out")]) == 2
    assert "no inputs" in capsys.readouterr().err


def test_panoptic_frames_equal_the_panoptic_images(tmp_path):
    import torch

    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fpn-panoptic-tiny", **{"data.test_scale": (96, 64)})
    knet.save_pretrained(model, tmp_path / "panoptic")
    clip = write_clip(tmp_path / "pan.mp4", frames=6, size=(72, 48), fps=8.0, seed=4)
    out = tmp_path / "out"
    assert _predict(tmp_path / "panoptic", clip, "--out-dir", out, "--save-frames") == 0
    _frames_as_images(decode_frames(clip), tmp_path / "images")
    assert _predict(tmp_path / "panoptic", tmp_path / "images", "--out-dir", tmp_path / "per_image") == 0
    for i in range(6):
        frame, image = out / f"pan_{i:06d}", tmp_path / "per_image" / f"f_{i:06d}"
        assert np.array_equal(np.asarray(Image.open(f"{frame}.png")), np.asarray(Image.open(f"{image}.png")))
        frame_info, image_info = (json.loads(Path(f"{p}.json").read_text()) for p in (frame, image))
        assert frame_info["file_name"] == f"pan_{i:06d}.png"
        assert frame_info["segments_info"] == image_info["segments_info"]
    assert video_info(out / "pan_overlay.mp4") == (6, 8.0, (72, 48))
