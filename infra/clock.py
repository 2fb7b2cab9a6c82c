"""The scheduler's clock: the system's, or one that runs faster from a fixed origin (tests and demos of schedules
that should not wait real minutes; the edge of the world, so the scheduler's own code runs unchanged).

`TRAINYARD_SCHEDULER_CLOCK`: empty for the system clock, or `<fake origin ISO>@<real origin epoch s>x<speed>`:
`now = fake origin + (time.time() - real origin) * speed`. Every process given the same value shares one timeline,
and a restarted process continues it.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone


class SystemClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class FastClock:
    def __init__(self, origin: datetime, real_origin: float, speed: float) -> None:
        if origin.tzinfo is None or speed <= 0:
            raise ValueError("a fast clock needs a timezone-aware origin and a positive speed")
        self.origin, self.real_origin, self.speed = origin, real_origin, speed

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.real_origin) * self.speed)

    def spec(self) -> str:
        return f"{self.origin.isoformat()}@{self.real_origin!r}x{self.speed!r}"


def clock_from(spec: str | None) -> SystemClock | FastClock:
    """The clock a `TRAINYARD_SCHEDULER_CLOCK` value names (ValueError for a malformed one)."""
    if not spec:
        return SystemClock()
    origin, _, rest = spec.partition("@")
    real, _, speed = rest.partition("x")
    return FastClock(datetime.fromisoformat(origin), float(real), float(speed))
