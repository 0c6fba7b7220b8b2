"""End-to-end frames per second of ``knet predict`` on a video, beside the model alone.

    python benchmarks/video_throughput.py --save benchmarks/results/video_throughput.json
    python benchmarks/video_throughput.py --models knet-r50-fcn-tiny --frames 12    # a quick check

For each model (random weights; speed does not depend on them) a 640x360 clip of moving shapes is
written with OpenCV, then, alternating in rounds on the same frames and threads:

- ``video``: :func:`knet.inference.video.predict_video`, what ``knet predict clip.mp4`` runs:
  decoding in a background thread, the segmenter, overlays, and encoding the overlay video in
  another thread;
- ``model``: the same segmenter streaming the frames already decoded in memory, each result dropped
  as it comes, nothing drawn or written: the model's own time through the same test pipeline;
- ``benchmark``: ``knet benchmark``'s forward at the size the pipeline resizes the frames to.

The overhead is ``video / model - 1``: what decoding, drawing and encoding add to the model's time;
``benchmark`` shows the forward alone, without the pipeline's resizing and post-processing.
Writes JSON (machine, versions, every round's time) to ``--save``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script

SIZE = (640, 360)


def write_clip(path: Path, frames: int, fps: float = 25.0) -> List[np.ndarray]:
    """A clip of a disc and a box moving over a gradient; returns its frames as RGB arrays."""
    import cv2

    width, height = SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    rng = np.random.default_rng(0)
    background = np.linspace(40, 200, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    out = []
    for index in range(frames):
        frame = (background + rng.normal(0, 6, background.shape)).clip(0, 255).astype(np.uint8)
        cv2.circle(frame, (60 + 12 * index % (width - 120), 180), 50, (200, 40, 40), -1)
        cv2.rectangle(frame, (400 - 5 * index % 300, 60), (520 - 5 * index % 300, 160), (40, 160, 60), -1)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        out.append(frame)
    writer.release()
    return out


def measure(preset: str, frames: int, rounds: int, work: Path) -> Dict[str, object]:
    import torch

    from knet import Segmenter, build_model
    from knet.data.transforms import keep_ratio_size
    from knet.engine.benchmark import benchmark
    from knet.inference.video import predict_video

    torch.manual_seed(0)
    model = build_model(preset).eval()
    segmenter = Segmenter(model, device="cpu")
    clip = work / f"{preset}.mp4"
    images = write_clip(clip, frames)
    width, height = keep_ratio_size(*SIZE, tuple(model.config.data.test_scale))
    divisor = getattr(model.config.data, "size_divisor", 1)  # the mask models pad to a multiple of 32
    width, height = -(-width // divisor) * divisor, -(-height // divisor) * divisor
    segmenter.segment_arrays(images[:1])  # warm-up
    times: Dict[str, List[float]] = {"video": [], "model": []}
    for round_index in range(rounds):
        start = time.perf_counter()
        for _ in segmenter.stream(iter(images)):  # one result at a time, as the video path holds them
            pass
        times["model"].append(time.perf_counter() - start)
        start = time.perf_counter()
        summary = predict_video(segmenter, clip, work / f"{preset}-{round_index}", progress=False)
        times["video"].append(time.perf_counter() - start)
        if summary.frames != frames:
            raise SystemExit(f"{preset}: the overlay video has {summary.frames} frames, the clip {frames}")
    bench_size = (width, height)
    forward = benchmark(model, size=bench_size, device="cpu", iters=3, warmup=1)
    video, alone = statistics.median(times["video"]), statistics.median(times["model"])
    return {"model": preset, "frames": frames, "size": list(SIZE), "per_round": times,
            "video_fps": round(frames / video, 3), "model_fps": round(frames / alone, 3),
            "overhead": round(video / alone - 1, 4), "benchmark_images_per_s": forward.images_per_s,
            "benchmark_size": list(bench_size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["knet-r50-fcn", "knet-r50-fpn-panoptic"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, metavar="JSON")
    args = parser.parse_args()

    import torch

    from knet.utils.memory import apply_cli_allocator

    torch.set_num_threads(args.threads)
    apply_cli_allocator()  # as `knet predict` runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models:
            row = measure(preset, args.frames, args.rounds, Path(tmp))
            rows.append(row)
            print(f"{preset}: video {row['video_fps']:.2f} frames/s, model alone {row['model_fps']:.2f} frames/s "
                  f"(overhead {100 * row['overhead']:+.1f}%), knet benchmark {row['benchmark_images_per_s']:.2f} "
                  f"images/s at {row['benchmark_size'][0]}x{row['benchmark_size'][1]}", flush=True)
    if args.save:
        record = {"benchmark": "video_throughput", "machine": machine_info(args.threads),
                  "settings": {"frames": args.frames, "rounds": args.rounds, "size": list(SIZE)}, "rows": rows}
        save_results(args.save, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
