"""Dynamic batching: concurrent requests for the same model (and, for generation, the same sampling
settings) are merged into one model call.

One worker coroutine takes the oldest waiting key, waits a short collection window for more requests
with that key (skipped when the batch is already full), and runs the batch on the model thread.
While a batch runs, new requests queue up, so under load the next batch forms without waiting.
max_items=1 turns batching off: every request is its own model call (same code path, for comparison).
Hand-written because the few libraries that do this are tied to their own servers (Triton, Ray Serve).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field


@dataclass
class _Pending:
    item: object
    size: int
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DynamicBatcher:
    def __init__(self, run: Callable[[Hashable, list], list], executor: Executor, *, window_ms: float,
                 max_items: int, on_batch: Callable[[Hashable, int], None] = lambda key, n: None):
        """`run(key, items)` returns one result per item; it runs on `executor` (the model thread)."""
        self.run, self.executor, self.on_batch = run, executor, on_batch
        self.window = max(0.0, window_ms) / 1000
        self.max_items = max(1, max_items)
        self._queues: dict[Hashable, list[_Pending]] = {}
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, key: Hashable, item, size: int = 1):
        """Queue `item` (worth `size` items toward the batch limit, e.g. its number of texts) and wait
        for its result."""
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._loop())
        pending = _Pending(item, size)
        self._queues.setdefault(key, []).append(pending)
        self._wakeup.set()
        return await pending.future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            key = next(iter(self._queues))  # oldest key first (dicts keep insertion order)
            if self.window and sum(p.size for p in self._queues[key]) < self.max_items:
                await asyncio.sleep(self.window)
            batch = self._take(key)
            if not self._queues:
                self._wakeup.clear()
            self.on_batch(key, sum(p.size for p in batch))
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.run, key, [p.item for p in batch])
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, r in zip(batch, results):
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(r)

    def _take(self, key) -> list[_Pending]:
        queue, batch, total = self._queues[key], [], 0
        while queue and (not batch or total + queue[0].size <= self.max_items):
            total += queue[0].size
            batch.append(queue.pop(0))
        if not queue:
            del self._queues[key]
        return batch
