"""Progress for both engines: a tqdm bar on a terminal, a line per tenth of an epoch elsewhere."""
from __future__ import annotations

import sys
import time
from typing import Callable


class ProgressLines:
    """Where no bar can be drawn (a log file, a pipe, CI): a line at every tenth of the
    epoch, so a long epoch shows it is alive. ``log`` is a no-op under --quiet."""

    def __init__(self, log: Callable[[str], None], total: int, initial: int = 0, desc: str = ""):
        self.log, self.total, self.n, self.desc = log, total, initial, desc
        self.every = max(1, -(-total // 10))
        self.loss = ""
        self.started, self.first = time.perf_counter(), initial

    def update(self, n: int) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            per_step = (time.perf_counter() - self.started) / max(1, self.n - self.first)
            self.log(f"{self.desc}: step {self.n}/{self.total}{self.loss}, {per_step:.2f} s/step")

    def set_postfix(self, loss: str = "") -> None:
        self.loss = f", loss {loss}" if loss else ""

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, log: Callable[[str], None], **kwargs):
    """A tqdm bar on a terminal (``enabled``), progress lines through ``log`` otherwise."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
        except ImportError:  # progress bars are a nicety, not a requirement
            pass
    return ProgressLines(log, kwargs["total"], kwargs.get("initial", 0), kwargs.get("desc", ""))
