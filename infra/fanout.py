"""An in-process fan-out of "something changed" signals to the live streams (a notifier, not a data bus).

Producers call `notify(topic)` from any thread: the telemetry projectors after each insert (`metrics:<job id>`,
`logs:<job id>`), the read models' NOTIFY listener when a read model commits (`read-model:<name>`). A stream `subscribe`s to its
topics and `await wait(timeout)`s; a notify only wakes it, and it then READS what changed from the stores after its
own cursor. No data is queued here, so a slow stream only falls behind; memory is a flag and the set of topics notified
per subscription, and a notify lost or coalesced costs at most the stream's periodic re-check.

Thread safety: `notify` may be called from any thread; `subscribe`, `wait` and `close` on one event loop (the first
subscriber's: serve's).
"""
from __future__ import annotations

import asyncio
import threading


class Subscription:
    """One stream's wake-up flag over its topics. Use as a context manager (it unsubscribes on exit)."""

    def __init__(self, fanout: Fanout, topics: tuple[str, ...]) -> None:
        self.fanout, self.topics = fanout, topics
        self._event = asyncio.Event()
        self._fired: set[str] = set()

    async def wait(self, timeout: float) -> set[str]:
        """The topics notified since the last wait (waiting up to `timeout` seconds for one); empty after
        `timeout` seconds of quiet."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return set()
        return self.take()

    def take(self) -> set[str]:
        """The topics notified since the last wait or take, without waiting."""
        fired, self._fired = self._fired, set()
        self._event.clear()
        return fired

    def _set(self, topic: str) -> None:
        self._fired.add(topic)
        self._event.set()

    def close(self) -> None:
        self.fanout._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fanout:
    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, *topics: str) -> Subscription:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscription(self, topics)
        with self._lock:
            for topic in topics:
                self._subs.setdefault(topic, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            for topic in sub.topics:
                subs = self._subs.get(topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[topic]

    def notify(self, topic: str) -> None:
        """Wake every subscription to `topic` (from any thread; a topic nobody follows costs a dict lookup)."""
        with self._lock:
            subs = list(self._subs.get(topic, ()))
        if not subs or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            for sub in subs:
                sub._set(topic)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: [sub._set(topic) for sub in subs])

    def subscribers(self) -> int:
        """How many (subscription, topic) pairs are open: 0 when every stream has gone."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())
