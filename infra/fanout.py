"""An in-process fan-out of "something changed" signals to the live streams, with what changed where that is small.

Producers call `notify(topic, data)` from any thread: the telemetry projectors after each insert (`metrics:<job id>`,
`logs:<job id>`, with the rows just inserted), the read models' NOTIFY listener when a read model commits
(`read-model:<name>`, no data). A stream `subscribe`s to its topics and `await wait(timeout)`s; a notify wakes it,
and it then reads what changed after its own cursor: from the data handed over (`take_pushed`), when the
subscription holds every item notified on the topic since it began, else from the stores. A subscription keeps at
most `max_items` items (sum of `len(data)`) per topic; past that it drops them and says the topic's data is
incomplete (the stream reads the store instead), so a slow stream costs bounded memory and only falls behind. A
notify lost or coalesced costs at most the stream's periodic re-check.

Thread safety: `notify` may be called from any thread; `subscribe`, `wait` and `close` on one event loop (the first
subscriber's: serve's).
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any


class Subscription:
    """One stream's wake-up flag over its topics. Use as a context manager (it unsubscribes on exit)."""

    def __init__(self, fanout: Fanout, topics: tuple[str, ...], max_items: int) -> None:
        self.fanout, self.topics, self.max_items = fanout, topics, max_items
        self._event = asyncio.Event()
        self._fired: set[str] = set()
        # topic -> the data notified since the last take_pushed (absent: none), or None once some was not kept
        self._pushed: dict[str, list | None] = {}
        self._held: dict[str, int] = {}

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

    def take_pushed(self, topic: str) -> list | None:
        """The data of every notify on `topic` since the subscription began or this was last called, in order; None
        when there was none (a periodic re-read: the store, in case a producer elsewhere wrote), or when some was
        not kept: then read the store."""
        self._held.pop(topic, None)
        return self._pushed.pop(topic, None)

    def _set(self, topic: str, data: Any, size: int) -> None:
        self._fired.add(topic)
        self._event.set()
        held = self._pushed.get(topic, [])
        if held is None:
            return
        if data is None or self._held.get(topic, 0) + size > self.max_items:
            self._pushed[topic], self._held[topic] = None, 0
            return
        held.append(data)
        self._pushed[topic] = held
        self._held[topic] = self._held.get(topic, 0) + size

    def close(self) -> None:
        self.fanout._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fanout:
    def __init__(self, max_items: int = 20_000) -> None:
        """`max_items`: what one subscription holds per topic before it says "read the store" instead."""
        self.max_items = max_items
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, *topics: str) -> Subscription:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscription(self, topics, self.max_items)
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

    def followed(self, topic: str) -> bool:
        """Whether some stream follows `topic` (so a producer builds `data` only then)."""
        return topic in self._subs

    def notify(self, topic: str, data: Any = None, size: int = 0) -> None:
        """Wake every subscription to `topic` (from any thread; a topic nobody follows costs a dict lookup), handing
        it `data`: what changed, counting as `size` items (shared by the subscriptions: never modify it), or None
        for "read the store"."""
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
                sub._set(topic, data, size)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: [sub._set(topic, data, size) for sub in subs])

    def subscribers(self) -> int:
        """How many (subscription, topic) pairs are open: 0 when every stream has gone."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())
