"""A counter shared by forked worker processes: how many calls ran, which ran twice,
and how late each started."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

CTX = mp.get_context("fork")


class Counter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.runs: Any = CTX.Array("B", n, lock=False)  # runs per call, saturating at 255
        self.total: Any = CTX.Value("q", 0)
        self.lateness: Any = CTX.Array("d", n, lock=False)  # seconds past due, per call
        # When the first call started, and the n-th (epoch seconds; 0 until then).
        self.first: Any = CTX.Value("d", 0.0, lock=False)
        self.last: Any = CTX.Value("d", 0.0, lock=False)

    def hit(self, i: int, due: float = 0.0) -> None:
        """Record that call ``i`` started; ``due`` (epoch seconds) to measure lateness."""
        if due:
            self.lateness[i] = time.time() - due
        if self.runs[i] < 255:
            self.runs[i] += 1
        with self.total.get_lock():
            if self.total.value == 0:
                self.first.value = time.time()
            self.total.value += 1
            if self.total.value == self.n:
                self.last.value = time.time()

    @property
    def running_seconds(self) -> float | None:
        """From the start of the first call to the start of the n-th: the drain itself,
        without the workers' start-up."""
        if not self.first.value or not self.last.value:
            return None
        return float(self.last.value - self.first.value)

    @property
    def done(self) -> int:
        return int(self.total.value)

    def duplicates(self) -> int:
        return sum(max(0, runs - 1) for runs in self.runs)

    def missing(self) -> int:
        return sum(1 for runs in self.runs if runs == 0)

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.done < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True
