"""Videos and streams in Python: the frame reader (counts, rates, every/start/end, a file that breaks
off, sources that do not open), Segmenter.stream over videos and generators (the per-image results,
frame indices and timestamps, early exits, flat memory) and predict_video's files."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import knet
from knet.data.video import ImageSequence, VideoReader, camera_index, is_url, source_name
from knet.errors import DataError, KnetError
from knet.inference.video import predict_video
from knet.utils.background import prefetch
from tests.video_helpers import decode_frames, truncate, video_info, write_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmenter():
    import torch

    torch.manual_seed(0)
    model = knet.build_model("knet-r50-fcn-tiny", num_classes=4, **{"data.test_scale": (96, 64)})
    return knet.Segmenter(model, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """25 frames, 80x48, 12 fps, mp4v."""
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def test_sources_are_recognised():
    assert camera_index(0) == 0 and camera_index("camera:2") == 2
    assert camera_index("0") is None and camera_index(True) is None and camera_index("clip.mp4") is None
    assert is_url("rtsp://cam.local/live") and is_url("https://x.org/a.mp4") and not is_url("clip.mp4")
    assert source_name("rtsp://cam.local/live/main") == "main" and source_name("rtsp://cam.local") == "cam.local"
    assert source_name("camera:1") == "camera1" and source_name("dir/clip.mp4") == "clip"


def test_reader_gives_every_frame_with_its_index_and_time(clip):
    with VideoReader(clip) as video:
        assert (video.fps, video.size, video.frame_count, video.expected) == (12.0, (80, 48), 25, 25)
        frames = list(video)
    assert [f.index for f in frames] == list(range(25))
    assert frames[12].timestamp == pytest.approx(1.0)
    decoded = decode_frames(clip)
    assert all(np.array_equal(f.image, d) for f, d in zip(frames, decoded))


@pytest.mark.parametrize("options, indices", [
    (dict(every=3), list(range(0, 25, 3))),
    (dict(start=1.0, end=1.5), list(range(12, 18))),
    (dict(start=0.5, every=4, max_frames=3), [6, 10, 14]),
    (dict(end=10.0), list(range(25))),
])
def test_reader_every_start_end_and_max_frames(clip, options, indices):
    video = VideoReader(clip, **options)
    assert video.expected == len(indices)
    assert [f.index for f in video] == indices


def test_reader_refuses_bad_options(clip):
    for options in (dict(every=0), dict(start=-1.0), dict(start=2.0, end=1.0), dict(max_frames=0)):
        with pytest.raises(KnetError):
            VideoReader(clip, **options)


def test_a_file_that_breaks_off_gives_its_frames_then_names_the_break(tmp_path):
    path = truncate(write_clip(tmp_path / "cut.avi", frames=30, fourcc="MJPG"), 0.5)
    read = []
    with pytest.raises(DataError, match=r"cut.avi: the video breaks off at frame (\d+) of 30") as err:
        for frame in VideoReader(path):
            read.append(frame.index)
    assert 0 < len(read) < 29 and f"frame {len(read)} of 30" in str(err.value)
    assert read == list(range(len(read)))


@pytest.mark.parametrize("make, match", [
    (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "not a video OpenCV can decode"),
    (lambda d: d / "missing.mp4", "video file not found"),
    (lambda d: (d / "empty.avi").write_bytes(b"") is not None and d / "empty.avi", "video file is empty"),
    (lambda d: "camera:97", "camera 97 does not open"),
])
def test_sources_that_do_not_open_are_one_line_errors(tmp_path, make, match):
    with pytest.raises(DataError, match=match) as err:
        VideoReader(make(tmp_path))
    assert "\n" not in str(err.value)


def test_image_sequence_reads_files_in_order_and_skips_bad_ones(tmp_path):
    from knet.data.io import write_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"f{i}.png")
        write_image(paths[-1], rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    paths[2].write_bytes(b"broken")
    frames = list(ImageSequence(paths, fps=10.0))
    assert [(f.index, f.timestamp) for f in frames] == [(0, 0.0), (1, 0.1), (3, 0.3), (4, 0.4)]
    sequence = ImageSequence(paths, fps=10.0, every=2, start=0.1)
    assert sequence.expected == 2 and [f.index for f in sequence] == [1, 3]


# --------------------------------------------------------------------------------------------
# Segmenter.stream
# --------------------------------------------------------------------------------------------
def _same(a, b) -> bool:
    return np.array_equal(a.labels, b.labels)


def _close(a, b) -> bool:
    """Equal label maps up to float rounding: a batch's convolutions sum in another order than a
    single image's, which can flip a pixel whose two best classes tie to 1e-5."""
    return (a.labels != b.labels).mean() <= 0.001


def test_stream_of_a_video_equals_segmenting_each_frame(segmenter, clip):
    results = list(segmenter.stream(str(clip), every=2))
    batched = list(segmenter.stream(str(clip), batch_size=4, every=2))
    assert all(_close(b, r) for b, r in zip(batched, results)) and len(batched) == len(results)
    decoded = decode_frames(clip)
    assert [r.frame_index for r in results] == list(range(0, 25, 2))
    assert [r.timestamp for r in results] == pytest.approx([i / 12.0 for i in range(0, 25, 2)])
    for result in results:
        assert _same(result, segmenter(decoded[result.frame_index]))
    assert results[0].overlay().shape[1] > 80 and results[0].video_frame().shape == (48, 80, 3)  # no legend


def test_stream_of_a_generator_equals_per_image_calls(segmenter):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40, 56, 3) if i % 3 else (32, 64, 3), dtype=np.uint8) for i in range(11)]
    produced = []

    def generate():
        for frame in frames:
            produced.append(1)
            yield frame

    results = list(segmenter.stream(generate()))
    assert len(produced) == 11 and [r.frame_index for r in results] == list(range(11))
    assert all(r.timestamp is None for r in results)
    for frame, result in zip(frames, results):
        assert _same(result, segmenter(frame)) and np.array_equal(result.image, frame)
    batched = list(segmenter.stream(iter(frames), batch_size=3))  # sizes mixed within a batch
    assert [r.frame_index for r in batched] == list(range(11))
    assert all(_close(b, r) for b, r in zip(batched, results))
    # every and max_frames count positions in the iterable
    picked = list(segmenter.stream(iter(frames), every=4, max_frames=2))
    assert [r.frame_index for r in picked] == [0, 4]
    with pytest.raises(KnetError, match="start and end apply to videos"):
        list(segmenter.stream(frames, start=1.0))


def test_stream_of_paths_still_works_and_names_a_bad_file(segmenter, tmp_path):
    from knet.data.io import write_image

    good = tmp_path / "a.png"
    write_image(good, np.full((20, 24, 3), 90, np.uint8))
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert [r.source for r in segmenter.stream([good, str(good)])] == [str(good)] * 2
    with pytest.raises(DataError, match="bad.png"):
        list(segmenter.stream([good, tmp_path / "bad.png"]))


def test_leaving_a_stream_early_stops_its_reader(segmenter, clip):
    before = threading.active_count()
    stream = segmenter.stream(str(clip), batch_size=2)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert threading.active_count() == before


def test_prefetch_keeps_order_and_raises_where_the_error_was():
    def items():
        yield from range(5)
        raise ValueError("at five")

    seen = []
    with pytest.raises(ValueError, match="at five"):
        for item in prefetch(items(), size=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_stays_flat_over_a_long_stream(segmenter):
    # Each result holds ~0.7 MB (the frame and its class scores): 500 kept would show as 350 MB.
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (160, 240, 3), dtype=np.uint8)

    def frames():
        for i in range(600):
            yield np.roll(base, i, axis=1)

    rss = {}
    for count, result in enumerate(segmenter.stream(frames(), batch_size=4), start=1):
        if count in (100, 600):
            rss[count] = _rss_mb()
    assert count == 600
    assert rss[600] - rss[100] < 50, rss


# --------------------------------------------------------------------------------------------
# predict_video
# --------------------------------------------------------------------------------------------
def test_predict_video_writes_the_overlay_video_and_the_summary(segmenter, clip, tmp_path):
    summary = predict_video(segmenter, VideoReader(clip, every=2), tmp_path / "out" / "clip", batch_size=4,
                            progress=False)
    assert (summary.frames, summary.first_frame, summary.last_frame) == (13, 0, 24)
    assert (summary.fps_in, summary.fps_out, summary.width, summary.height) == (12.0, 6.0, 80, 48)
    assert summary.complete and summary.error is None
    assert video_info(tmp_path / "out" / "clip_overlay.mp4") == (13, 6.0, (80, 48))
    saved = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert saved["frames"] == 13 and saved["video"] == "clip_overlay.mp4"
    assert sum(c["fraction"] for c in saved["classes"]) == pytest.approx(1.0, abs=1e-4)
    assert saved["classes"] == sorted(saved["classes"], key=lambda c: -c["fraction"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.json", "clip_overlay.mp4"]


def test_predict_video_of_a_broken_file_keeps_what_it_wrote(segmenter, tmp_path):
    path = truncate(write_clip(tmp_path / "cut.avi", frames=30, fourcc="MJPG"), 0.5)
    readable = len(decode_frames(path))
    summary = predict_video(segmenter, path, tmp_path / "out" / "cut", save_frames=True, progress=False)
    assert not summary.complete and f"breaks off at frame {readable} of 30" in summary.error
    assert summary.frames == readable
    assert video_info(tmp_path / "out" / "cut_overlay.mp4")[0] == readable  # complete and playable
    assert len(list((tmp_path / "out").glob("cut_0*.png"))) == readable
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file is left


def test_ctrl_c_leaves_a_complete_video_and_a_summary(segmenter, tmp_path):
    from knet.data.io import write_image

    paths = []
    for i in range(6):
        paths.append(tmp_path / "frames" / f"{i}.png")
        write_image(paths[-1], np.full((24, 32, 3), 40 * i, np.uint8))

    class Stopped(ImageSequence):
        def __iter__(self):
            for count, frame in enumerate(super().__iter__()):
                if count == 3:
                    raise KeyboardInterrupt
                yield frame

    summary = predict_video(segmenter, Stopped(paths, fps=4.0), tmp_path / "out" / "frames", progress=False)
    assert summary.interrupted and not summary.complete and summary.frames == 3
    assert video_info(tmp_path / "out" / "frames_overlay.mp4") == (3, 4.0, (32, 24))
    assert json.loads((tmp_path / "out" / "frames.json").read_text())["interrupted"] is True


def test_a_video_that_cannot_be_written_is_a_one_line_error(tmp_path):
    from knet.inference.video import VideoFileWriter

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(KnetError, match="cannot create the folder"):
        VideoFileWriter(tmp_path / "file" / "x_overlay.mp4", 10.0, (32, 24))
