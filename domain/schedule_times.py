"""When a schedule fires: a cron expression read in an IANA timezone, through croniter (the one cron library we use,
so what `croniter` says is what fires). No I/O.

Times in and out are timezone-aware; the scheduler keeps them in UTC. DST follows croniter: a wall-clock time that
a spring-forward skips fires at the first time after the gap, and an hour that a fall-back repeats is walked twice
(each of its instants is its own scheduled time). A sixth field is seconds (`*/10 * * * * *`), for tests and
benchmarks that cannot wait a minute a fire.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

from domain.contract import FieldError

MAX_CRON_CHARS = 200


class CronSpecError(FieldError):
    """A cron expression or a timezone that cannot be used; `field` names the body field at fault."""


def check_cron(expr: str) -> str:
    """The expression, stripped, if croniter reads it as 5 fields (minute precision) or 6 (seconds last)."""
    text = " ".join(expr.split())
    if not text or len(text) > MAX_CRON_CHARS or len(text.split(" ")) not in (5, 6):
        raise CronSpecError("cron", "5 fields (minute hour day month weekday) or 6 (seconds last)")
    if not croniter.is_valid(text):
        raise CronSpecError("cron", f"not a cron expression croniter reads: {text!r}")
    try:  # valid but never true (Feb 30th) would spin croniter: refuse it here
        croniter(text, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except Exception as e:  # croniter raises its own CroniterBadDateError and friends
        raise CronSpecError("cron", f"{text!r} never fires ({type(e).__name__})") from None
    return text


def check_timezone(name: str) -> str:
    """An IANA timezone name (`Europe/Berlin`, `UTC`)."""
    if not name or len(name) > 64 or name not in _zones():
        raise CronSpecError("timezone", f"not an IANA timezone name: {name[:64]!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronSpecError("timezone", f"no tz data for {name!r}") from None
    return name


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
        _ZONES.add("UTC")
    return _ZONES


def fire_times(cron: str, tz: str, after: datetime) -> Iterator[datetime]:
    """The scheduled times strictly after `after`, in order, in UTC (endless: the caller stops)."""
    it = croniter(cron, after.astimezone(ZoneInfo(tz)))
    while True:
        yield it.get_next(datetime).astimezone(timezone.utc)


def times_between(cron: str, tz: str, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The scheduled times in (`after`, `until`], at most `limit` of them, oldest first."""
    out: list[datetime] = []
    for t in fire_times(cron, tz, after):
        if t > until or len(out) >= limit:
            break
        out.append(t)
    return out


def next_time(cron: str, tz: str, after: datetime) -> datetime:
    return next(fire_times(cron, tz, after))
