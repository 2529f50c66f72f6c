"""Dynamic micro-batching: rows that arrive together run as one batch on one worker thread.

Requests put their decoded images on an asyncio queue; one collector task takes what is queued (up to
``max_batch`` rows), waits at most ``wait_ms`` for more *while other requests are known to be on their
way* (they have arrived and are still being read or decoded), hands the batch to a single worker
thread that runs the engine, and gives each caller its own rows. The event loop never runs inference,
and the engine is only ever called from that one thread.

Written here rather than taken from a library: the whole mechanism is this ~100-line file on asyncio's
own queue and executor. The libraries that batch dynamically (Ray Serve's ``@serve.batch``, BentoML's
adaptive batching, Triton) come as serving frameworks with their own process model and runtime, which
would cost the server its sub-second, torch-free start; none of them offers the "wait only while more
requests are coming" rule below, which keeps a lone request from paying the batching wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Row = TypeVar("Row")

_STOP = object()


@dataclass
class BatchStats:
    """What the batcher has done: engine calls, rows run, the largest batch."""

    calls: int = 0
    rows: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.rows / self.calls if self.calls else 0.0


class MicroBatcher(Generic[Item, Row]):
    """Gathers ``submit``-ted items into batches for ``run_batch(list[item]) -> sequence of rows``.

    ``start()`` and ``stop()`` run on the event loop that serves the requests; ``stop()`` finishes
    every queued item before it returns (graceful shutdown).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Row]],
        *,
        max_batch: int = 32,
        wait_ms: float = 5.0,
        name: str = "convnets-batch",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be at least 0, got {wait_ms}")
        self.run_batch, self.max_batch, self.wait_s, self.name = run_batch, max_batch, wait_ms / 1000, name
        self.stats = BatchStats()
        self._incoming = 0  # requests being read/decoded that will submit soon
        self._lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._arrived = asyncio.Event()  # set by submit: wakes a collector that waits for more rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=self.name)

    async def stop(self) -> None:
        """Run everything already queued, then end the collector and the worker thread."""
        if self._task is None:
            return
        await self._queue.put(_STOP)
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    @contextmanager
    def incoming(self):
        """Marks a request that will submit rows soon, so the collector waits for it (up to wait_ms)."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1
            if self._task is not None:
                self._arrived.set()  # a waiting collector re-checks whether anyone is still coming

    async def submit(self, items: Sequence[Item]) -> list[Row]:
        """Rows for ``items`` (in order), each run in whichever batch it lands in."""
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if self._incoming == 0 or remaining <= 0:
                        break  # nobody else is on the way: don't make this batch wait
                    self._arrived.clear()
                    try:
                        # Event.wait, not Queue.get: a get() cancelled by the timeout could drop an item.
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                    continue
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, asyncio.Future]]) -> None:
        live = [(item, future) for item, future in batch if not future.done()]  # caller gone: skip
        if not live:
            return
        try:
            rows = await loop.run_in_executor(self._executor, self.run_batch, [item for item, _ in live])
            if len(rows) != len(live):
                raise RuntimeError(f"the engine returned {len(rows)} rows for a batch of {len(live)}")
        except Exception as e:  # every caller in the batch gets the failure; the loop goes on
            for _, future in live:
                if not future.done():
                    future.set_exception(e)
            return
        self.stats.calls += 1
        self.stats.rows += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        for (_, future), row in zip(live, rows):
            if not future.done():
                future.set_result(row)


def choose_batch_limit(
    seconds_for: Callable[[int], float], ceiling: int, gain: float = 0.10
) -> tuple[int, dict[int, float]]:
    """The batch size worth gathering for an engine, from timings: ``(limit, seconds per row by size)``.

    ``seconds_for(n)`` times one call on ``n`` rows. Starting from 1, the size doubles (up to
    ``ceiling``) while the doubled batch costs at least ``gain`` less per row. Batching is not always
    a saving on a CPU: for mobilenet_v2 @224 on the 2-core test machine ONNX Runtime needed *more* CPU
    per image at batch 8 than at batch 1 (activations leave the cache), while for a tiny model the
    per-call overhead dominates and batches of 32 pay (bench/RESULTS.md, Serving).
    """
    per_row = {1: seconds_for(1)}
    limit = 1
    while limit < ceiling:
        size = min(2 * limit, ceiling)
        per_row[size] = seconds_for(size) / size
        if per_row[size] > (1 - gain) * per_row[limit]:
            break
        limit = size
    return limit, per_row
