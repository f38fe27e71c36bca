"""Request batching for serve.py: photos of concurrent requests are run through the model in one call.

Like TensorFlow Serving's batching: the first photo to arrive opens a batch; the batch is run when it is full
(`max_batch` photos) or `window` seconds after that first arrival. While a model call runs, new arrivals queue
and form the next batch, so batches grow with load by themselves. The window is only waited for while company
can come: an admitted request still decoding its photo, or fewer photos queued than the server has clients
(open connections). A lone client never waits for company that cannot come.

Admission is part of the batcher: `reserve(rows)` counts a request's photos from the moment it is accepted until
its answer is out, and refuses (QueueFull -> 503) when more than `queue_max` would be pending.
"""
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np


class QueueFull(Exception):
    """More photos pending than the queue allows: the caller answers 503 with Retry-After."""


class Batcher:
    def __init__(self, fn, max_batch: int, window: float, queue_max: int, batching: bool = True, name: str = "",
                 clients=None):
        """`fn`: uint8 (N, H, W, 3) -> array of N rows. batching=False runs every request's photos in its own
        thread at once (the unbatched server the benchmark compares with); admission applies all the same.
        `clients()`: how many clients may send soon (the server's open connections): a batch waits, within the
        window, for up to that many photos."""
        self.fn, self.max_batch, self.window, self.queue_max = fn, max(1, max_batch), window, queue_max
        self.batching, self.clients = batching, clients or (lambda: 0)
        self._cv = threading.Condition()
        self._jobs = deque()      # (x, future, arrival)
        self._queued = 0          # rows in _jobs
        self._pending = 0         # rows reserved and not yet answered (queue bound)
        self._coming = 0          # reservations that have not submitted yet (worth waiting for)
        self._closed = False
        self.calls = self.rows = 0  # model calls made and photos run (stats, tests)
        self._thread = None
        if batching:
            self._thread = threading.Thread(target=self._loop, daemon=True, name=f"batcher-{name}")
            self._thread.start()

    def reserve(self, rows: int = 1) -> "Slot":
        """Admit a request of `rows` photos now (QueueFull if there is no room). Use the slot in a `with`
        block: leaving it releases the room, whatever happened."""
        with self._cv:
            if self._pending and self._pending + rows > self.queue_max:
                raise QueueFull(f"{self._pending} photos are waiting for the model (at most {self.queue_max})")
            self._pending += rows
            self._coming += 1
        return Slot(self, rows)

    def _release(self, slot: "Slot") -> None:
        with self._cv:
            self._pending -= slot.rows
            if not slot.submitted:
                self._coming -= 1
                self._cv.notify_all()  # a batch may be waiting for this request: it will not come

    def _submit(self, x: np.ndarray) -> Future:
        fut = Future()
        if not self.batching:
            with self._cv:
                self._coming -= 1
            fut.set_running_or_notify_cancel()
            self._run([(x, fut)])
            return fut
        with self._cv:
            if self._closed:
                raise RuntimeError("batcher closed")  # cannot happen: a store closes it only when unused
            self._jobs.append((x, fut, time.monotonic()))
            self._queued += len(x)
            self._coming -= 1
            self._cv.notify_all()
        return fut

    def close(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                deadline = self._jobs[0][2] + self.window
                while self._queued < self.max_batch and not self._closed and (
                        self._coming > 0 or self._queued < self.clients()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, rows = [], 0
                while self._jobs and (not batch or rows + len(self._jobs[0][0]) <= self.max_batch):
                    x, fut, _ = self._jobs.popleft()
                    batch.append((x, fut))
                    rows += len(x)
                self._queued -= rows
            # a request that timed out while queued has cancelled its future: it is not run
            self._run([(x, f) for x, f in batch if f.set_running_or_notify_cancel()])

    def _run(self, jobs) -> None:
        if not jobs:
            return
        try:
            out = self.fn(np.concatenate([x for x, _ in jobs]) if len(jobs) > 1 else jobs[0][0])
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, which reports it
            for _, f in jobs:
                f.set_exception(e)
            return
        with self._cv:
            self.calls += 1
            self.rows += len(out)
        start = 0
        for x, f in jobs:
            f.batch = len(out)  # photos in the model call, for the X-Batch-Size header
            f.set_result(out[start:start + len(x)])
            start += len(x)


class Slot:
    """One admitted request: submit its photos once, then wait for the answer with a timeout."""

    def __init__(self, batcher: Batcher, rows: int):
        self._b, self.rows, self.submitted = batcher, rows, False
        self.batch = 0  # photos in the model call that answered (after run)

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self._b._release(self)

    def run(self, x: np.ndarray, timeout: float) -> np.ndarray:
        """The model's rows for x; TimeoutError (the photo is dropped from the queue if it has not run yet)."""
        assert not self.submitted, "a slot is submitted once"
        self.submitted = True
        fut = self._b._submit(np.asarray(x, np.uint8))
        try:
            out = fut.result(timeout=timeout)
            self.batch = getattr(fut, "batch", len(x))
            return out
        except FutureTimeout:  # on Python 3.10 not the built-in TimeoutError, which callers catch
            fut.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None
