"""A small progress bar for benchmark runs: drawn on a terminal only, and only once a run passes ``delay``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """``[#####.....] 3/12 label`` on ``stream``, redrawn in place.

    total: the number of steps the run will take.
    enabled: draw at all; ``None`` means "when ``stream`` is a terminal" (so logs and pipes stay clean).
    delay: seconds before the first draw: a run shorter than that shows no bar.
    clock: the time source (seconds).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool | None = None,
                 delay: float = 1.0, clock: Callable[[], float] = time.monotonic, width: int = 24) -> None:
        self.total = max(int(total), 1)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(self.stream.isatty()) if enabled is None else enabled
        self.delay = delay
        self.clock = clock
        self.width = width
        self.done = 0
        self.label = ""
        self._start = clock()
        self._shown = 0  # characters of the bar on screen now

    def _render(self) -> str:
        filled = self.width * min(self.done, self.total) // self.total
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {self.label}"

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _draw(self) -> None:
        if not self.enabled or self.clock() - self._start < self.delay:
            return
        text = self._render()
        self._clear()
        self.stream.write(text)
        self.stream.flush()
        self._shown = len(text)

    def step(self, label: str) -> None:
        """Say what runs next; the steps before it count as done."""
        self.label = label
        self._draw()
        self.done += 1

    def echo(self, text: str, out: TextIO | None = None) -> None:
        """Print a line of results to ``out`` (stdout) without tearing the bar."""
        self._clear()
        print(text, file=sys.stdout if out is None else out, flush=True)
        if self._shown == 0 and self.done:
            self._draw()

    def close(self) -> None:
        """Remove the bar."""
        self._clear()
        self.stream.flush()
