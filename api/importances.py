"""Parameter importances of a study, computed once per study version and a few at a time.

Optuna's importance evaluators fit a forest over every completed trial: seconds of CPU for a large study, on the
API's process. A result is kept per (study id, completed trials), so repeated calls cost nothing until a trial
completes; concurrent calls for the same key wait for the one computation; at most
`computing` computations run at once, and a call that cannot get a slot within `wait_s` is a 503 with
Retry-After rather than one more thread holding the GIL against every other request.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from api.problems import Problem

T = TypeVar("T")
Key = tuple[UUID, int]  # (study id, how many of its trials completed)


class ImportanceCache:
    def __init__(self, computing: int = 1, wait_s: float = 30.0, size: int = 256) -> None:
        self.computing, self.wait_s, self.size = computing, wait_s, size
        self._results: OrderedDict[Key, Any] = OrderedDict()
        self._inflight: dict[Key, asyncio.Event] = {}
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop, at first use
        self.computed = 0

    async def get(self, key: Key, compute: Callable[[], T]) -> T:
        """The cached result for `key`, else `compute()` run on a worker thread (one per key at a time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
            running = self._inflight.get(key)
            if running is None:
                break
            try:  # another request computes this one; if it fails, the loop makes this request try
                await asyncio.wait_for(running.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise self._busy() from None
        done = self._inflight[key] = asyncio.Event()
        try:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.computing)
            try:
                await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise self._busy() from None
            try:
                value = await run_in_threadpool(compute)
                self.computed += 1
            finally:
                self._slots.release()
            self._results[key] = value
            while len(self._results) > self.size:
                self._results.popitem(last=False)
            return value
        finally:
            del self._inflight[key]
            done.set()

    def _busy(self) -> Problem:
        return Problem(503, "Service unavailable", "parameter importances are being computed for other requests; "
                       "retry shortly", headers={"Retry-After": "2"})
