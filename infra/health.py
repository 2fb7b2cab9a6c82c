"""Stage health: what `/readyz` and `trainyard status` show for each background stage (design decision 10).

A `Stage` is told by its owner where it is (`observe(position, head)` or `progressed()`), when it failed
(`failed(exc)`), when it gave up on one item and moved on (`poisoned_one`), and that its loop is alive
(`tick()`). `snapshot()` turns that into a status:
- `stuck`: work is waiting (lag > 0) and nothing moved for `stuck_after_s`, or a looping stage stopped ticking;
- `error`: its last attempts failed and none succeeded for `stuck_after_s`;
- `behind`: more than `max_lag` items waiting;
- `starting`: not observed yet; `ok` otherwise.
Thread-safe enough for its use: plain attribute writes from one owner, reads from the API.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from domain.contract import printable

UNHEALTHY = ("stuck", "error", "behind")


@dataclass
class Stage:
    name: str
    stuck_after_s: float = 30.0
    max_lag: int = 10_000
    loops: bool = False  # a polling stage: it must tick
    position: int | None = None
    head: int | None = None
    poisoned: int = 0
    last_error: str | None = None
    _created: float = field(default_factory=time.monotonic)
    _progress_at: float | None = None
    _error_at: float | None = None
    _tick_at: float | None = None

    def tick(self) -> None:
        self._tick_at = time.monotonic()

    def observe(self, position: int | None, head: int | None) -> None:
        """Where the stage is and where its input ends; moving position (or nothing waiting) counts as progress."""
        if position != self.position or (head is not None and position is not None and position >= head):
            self._progress_at = time.monotonic()
        self.position, self.head = position, head
        self.tick()

    def progressed(self) -> None:
        self._progress_at = time.monotonic()
        self.tick()

    def failed(self, exc: BaseException | str) -> None:
        self.last_error = printable(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}", 300)
        self._error_at = time.monotonic()

    def poisoned_one(self, reason: str) -> None:
        self.poisoned += 1
        self.failed(f"poisoned item set aside: {reason}")
        self._progress_at = time.monotonic()

    @property
    def lag(self) -> int | None:
        if self.position is None or self.head is None:
            return None
        return max(0, self.head - self.position)

    def status(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        since_progress = now - (self._progress_at or self._created)
        if self.loops and now - (self._tick_at or self._created) > self.stuck_after_s:
            return "stuck"
        lag = self.lag
        if lag and since_progress > self.stuck_after_s:
            return "stuck"
        if self._error_at and self._error_at > (self._progress_at or 0) and now - self._error_at < self.stuck_after_s \
                and since_progress > self.stuck_after_s:
            return "error"
        if lag is not None and lag > self.max_lag:
            return "behind"
        if self._progress_at is None and self._tick_at is None:
            return "starting"
        return "ok"

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"status": self.status(now), "position": self.position, "head": self.head, "lag": self.lag,
                "last_progress_s": round(now - self._progress_at, 3) if self._progress_at else None,
                "last_error": self.last_error, "poisoned": self.poisoned}


class Health:
    """The stages of one process, by name."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}

    def stage(self, name: str, **kwargs: Any) -> Stage:
        if name not in self.stages:
            self.stages[name] = Stage(name, **kwargs)
        return self.stages[name]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: s.snapshot() for name, s in self.stages.items()}

    def healthy(self) -> bool:
        return all(s.status() not in UNHEALTHY for s in self.stages.values())


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile; whether it is set (a periodic stage's pause)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
