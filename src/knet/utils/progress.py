"""A small dependency-free progress bar on stderr.

    with ProgressBar(total=len(items), desc="test") as bar:
        for item in items:
            ...
            bar.update()

On a terminal the bar redraws in place (at most ten times a second); when stderr is a file or a
pipe it prints a plain line every tenth of the way instead, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def _format_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Progress of ``total`` steps (None when unknown), drawn on ``stream`` (stderr).

    Args:
        total: number of steps, or None to show only the count and rate.
        desc: a short label printed before the bar.
        stream: where to draw; stderr by default.
        enabled: False draws nothing (e.g. ``--quiet``); None draws.
        width: characters of the bar itself.
        unit: what a step is, for the rate (``it/s``, ``frames/s``).
    """

    def __init__(self, total: Optional[int] = None, desc: str = "", stream: Optional[IO[str]] = None,
                 enabled: Optional[bool] = None, width: int = 30, unit: str = "it") -> None:
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = True if enabled is None else bool(enabled)
        self.width = width
        self.unit = unit
        self.count = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_line_step = -1
        self._closed = False
        isatty = getattr(self.stream, "isatty", None)
        self._interactive = bool(isatty and isatty())

    # ---- public ----------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps and redraw when due."""
        self.count += n
        if not self.enabled:
            return
        if self._interactive:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self._done():
                self._last_draw = now
                self._write("\r" + self._line())
        else:
            # One line per tenth of the way (or per 100 steps when the total is unknown).
            step = (10 * self.count // self.total) if self.total else self.count // 100
            if step != self._last_line_step:
                self._last_line_step = step
                self._write(self._line() + "\n")

    def close(self) -> None:
        """Finish the bar (a final newline on a terminal). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._interactive:
            self._write("\r" + self._line() + "\n")

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- drawing ---------------------------------------------------------------------------
    def _done(self) -> bool:
        return self.total is not None and self.count >= self.total

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total:
            fraction = min(self.count / self.total, 1.0)
            filled = int(self.width * fraction)
            bar = "#" * filled + "." * (self.width - filled)
            remaining = (self.total - self.count) / rate if rate > 0 else 0.0
            return (f"{prefix}{100 * fraction:3.0f}% |{bar}| {self.count}/{self.total} "
                    f"[{_format_time(elapsed)}<{_format_time(remaining)}, {rate:.2f} {self.unit}/s]")
        return f"{prefix}{self.count} [{_format_time(elapsed)}, {rate:.2f} {self.unit}/s]"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # closed or broken stream: progress is not worth failing for
            self.enabled = False


def track(items: Iterable[T], total: Optional[int] = None, desc: str = "",
          enabled: Optional[bool] = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(total=total, desc=desc, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()
