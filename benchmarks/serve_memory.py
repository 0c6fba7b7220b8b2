"""The resident memory of a ``knet serve`` process over a stream of requests of varied sizes.

    python benchmarks/serve_memory.py                      # 120 requests, 64-700 px, the tiny FCN
    python benchmarks/serve_memory.py --requests 300 --save benchmarks/results/serve_memory.json

Each setting runs its own server (``--threads 1``, batch 4) with the same random weights and the
same seeded requests, one client sending them one after another; RSS is read from /proc after the
first 20 requests and after the last. The settings:

- ``default``: ``knet serve`` as it is: glibc's own allocator settings, the free heap handed back
  whenever the queue drains;
- ``reuse``: the process opts into :func:`knet.utils.memory.reuse_freed_memory` first (freed
  buffers stay in the heap for reuse) and hands nothing back: a server that only grows.

Writes JSON (the CPU, versions, commit, each setting's RSS after every 20 requests) to ``--save``.
"""
from __future__ import annotations

import argparse
import io
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import numpy as np

from machine import machine_info, save_results  # benchmarks/machine.py, beside this script

SETTINGS = {
    "default": "",
    "reuse": "from knet.utils.memory import reuse_freed_memory; reuse_freed_memory(); ",
}
LAUNCH = "import sys; {prelude}from knet.cli import main; sys.exit(main(sys.argv[1:]))"


def requests(count: int, seed: int = 0) -> List[bytes]:
    """``count`` PNG pictures with sides drawn from 64..700 px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(64, 701, 2))
        image = np.repeat(np.repeat(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), 16, 0), 16, 1)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image[:h, :w])).save(buffer, "PNG")
        pictures.append(buffer.getvalue())
    return pictures


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def run_server(model_dir: Path, setting: str, pictures: List[bytes], every: int = 20) -> List[float]:
    """RSS (MB) of a server of ``setting`` when idle and after every ``every`` requests."""
    import httpx

    command = [sys.executable, "-c", LAUNCH.format(prelude=SETTINGS[setting]), "serve", "--checkpoint",
               str(model_dir), "--port", "0", "--device", "cpu", "--threads", "1", "--batch-size", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        match = re.search(r" at (http://127\.0\.0\.1:\d+/) ", lines.get(timeout=120))
        if match is None:
            raise RuntimeError("knet serve printed no address")
        url = match.group(1)
        series = [rss_mb(process.pid)]
        with httpx.Client(timeout=300) as client:
            for index, data in enumerate(pictures, 1):
                answer = client.post(url + "v1/segment", files={"image": (f"{index}.png", data, "image/png")})
                answer.raise_for_status()
                if index % every == 0:
                    time.sleep(0.3)  # the worker's idle step runs after the answer is sent
                    series.append(rss_mb(process.pid))
        return series
    finally:
        process.terminate()
        process.wait(30)


def tiny_model(directory: Path) -> Path:
    import torch

    import knet

    torch.manual_seed(0)
    knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), directory)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--save", type=Path, default=None, metavar="JSON", help="write the results as JSON")
    args = parser.parse_args()
    if args.requests < 20:
        parser.error(f"--requests must be at least 20 (memory is read every 20), got {args.requests}")
    pictures = requests(args.requests)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(Path(tmp) / "model")
        for setting in args.settings:
            series = run_server(model_dir, setting, pictures)
            results[setting] = {"rss_mb_idle_then_every_20": [round(v, 1) for v in series],
                                "growth_after_first_20_mb": round(series[-1] - series[1], 1)}
            print(f"{setting:8s} idle {series[0]:.0f} MB, after 20 {series[1]:.0f} MB, after {args.requests} "
                  f"{series[-1]:.0f} MB (+{series[-1] - series[1]:.0f} MB)", flush=True)
    record = {"benchmark": "serve_memory", "model": "knet-r50-fcn-tiny", "requests": args.requests,
              "sizes_px": [64, 700], "machine": machine_info(), "results": results}
    if args.save:
        save_results(args.save, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
