"""Training throughput: images per second and time spent waiting for the data loader."""

from __future__ import annotations

import time


class Throughput:
    """Images per second of training, and the share of time spent waiting for the loader.

    A high ``data_wait_pct`` means the GPU is starved: raise the loader's ``workers``.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.steps, self.wait, self.busy = 0, 0.0, 0.0
        self._mark = time.perf_counter()

    def arrived(self) -> None:
        now = time.perf_counter()
        if self.steps or self.busy:  # the first batch of an epoch includes worker start-up
            self.wait += now - self._mark
        self._mark = now

    def done(self) -> None:
        now = time.perf_counter()
        self.busy += now - self._mark
        self.steps += 1
        self._mark = now

    def summary(self) -> dict[str, float]:
        total = self.wait + self.busy
        return {
            "images_per_s": self.steps * self.batch_size / max(total, 1e-9),
            "data_wait_pct": 100.0 * self.wait / max(total, 1e-9),
        }

    def postfix(self) -> dict[str, str]:
        s = self.summary()
        return {"img/s": f"{s['images_per_s']:.0f}", "wait": f"{s['data_wait_pct']:.0f}%"}
