"""The scheduler: part of `trainyard serve`, it hands each active schedule's due times to `run_due` as they come.

It reads the schedules read model only to find candidates (every `refresh_s`, or at once after its own fires) and
keeps their next times in memory; the aggregate decides. So any number of schedulers may run (one per serve
process): the second to decide a time finds it handled (commands/schedules.py). It sleeps until the earliest next
time, at most `refresh_s`, so a fire lags its scheduled second by the save and a wake-up.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Protocol
from uuid import UUID

from commands.schedules import Clock, ScheduleCommands
from domain.contract import printable
from domain.schedule_times import next_time
from infra.health import Stage, stopped_within

log = logging.getLogger("trainyard.scheduler")


class ScheduleCandidates(Protocol):
    """The schedules read model, as the scheduler reads it (projections/schedules.py ScheduleQueries)."""

    def active(self) -> list[tuple[UUID, str, str, datetime, int]]:
        """(id, cron, timezone, cursor, version) of every active schedule."""
        ...


class Scheduler:
    def __init__(self, commands: ScheduleCommands, candidates: ScheduleCandidates, clock: Clock, stage: Stage,
                 refresh_s: float = 1.0) -> None:
        self.commands, self.candidates, self.clock, self.stage = commands, candidates, clock, stage
        self.refresh_s = refresh_s
        self.next: dict[UUID, datetime] = {}  # each active schedule's next time
        self.handled = 0

    def refresh(self) -> None:
        fresh: dict[UUID, datetime] = {}
        for schedule_id, cron, tz, cursor, _ in self.candidates.active():
            known = self.next.get(schedule_id)
            due = next_time(cron, tz, cursor)
            fresh[schedule_id] = max(due, known) if known is not None else due  # our own fires may be ahead of it
        self.next = fresh

    def run_due_now(self) -> int:
        """Hand every schedule whose next time has come to `run_due`; how many times were handled."""
        now = self.clock.now()
        n = 0
        for schedule_id, due in list(self.next.items()):
            if due > now:
                continue
            try:
                n += len(self.commands.run_due(schedule_id, now))
                schedule = self.commands.app.load(schedule_id, LookupError)
                after = schedule.next_time()
                if after is None:
                    self.next.pop(schedule_id, None)
                else:
                    self.next[schedule_id] = after
            except Exception as e:  # one schedule's failure (a template that no longer loads) stops no other
                log.warning("schedule %s: %s", schedule_id, printable(e, 300))
                self.stage.failed(e)
                self.next.pop(schedule_id, None)  # the next refresh brings it back
        self.handled += n
        return n

    def _sleep_s(self, until_refresh: float) -> float:
        if not self.next:
            return until_refresh
        ahead = (min(self.next.values()) - self.clock.now()).total_seconds() / getattr(self.clock, "speed", 1.0)
        return max(0.0, min(ahead, until_refresh))

    async def run(self, stop: asyncio.Event) -> None:
        log.info("scheduler started")
        loop = asyncio.get_running_loop()
        refreshed = -1e9
        while not stop.is_set():
            try:
                if loop.time() - refreshed >= self.refresh_s:
                    await asyncio.to_thread(self.refresh)
                    refreshed = loop.time()
                await asyncio.to_thread(self.run_due_now)
                self.stage.progressed()
            except Exception as e:
                log.warning("scheduler pass failed: %s", printable(e, 300))
                self.stage.failed(e)
                self.stage.tick()
                await stopped_within(stop, 1.0)
                continue
            await stopped_within(stop, self._sleep_s(self.refresh_s - (loop.time() - refreshed)))
