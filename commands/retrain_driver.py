"""The retrain driver: part of `trainyard serve`, it takes each open retrain's next step as soon as it can be taken.

Every `interval_s` it reads the retrains read model for those with a step left and hands each to
`RetrainCommands.advance`, which loads the aggregate and decides there (the job's outcome to the gate's verdict, a
pass to a version, a version to its export, a completed export to a challenger). It polls rather than follows the
notification log: the few open retrains cost one indexed query a pass, a restart loses nothing (the read model says
what is open), and any number of drivers may run, since the aggregate records each step once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Protocol
from uuid import UUID

from commands.context import CommandContext
from commands.retrains import RetrainCommands
from domain.contract import printable
from infra.health import Stage, stopped_within

log = logging.getLogger("trainyard.retrains")
DRIVER = CommandContext(actor="system:retrain-driver")


class OpenRetrains(Protocol):
    """The retrains read model, as the driver reads it (projections/retrains.py RetrainQueries)."""

    def open(self) -> list[UUID]:
        """Every retrain with a step left, oldest first."""
        ...


class RetrainDriver:
    def __init__(self, commands: RetrainCommands, candidates: OpenRetrains, stage: Stage,
                 interval_s: float = 1.0) -> None:
        self.commands, self.candidates, self.stage, self.interval_s = commands, candidates, stage, interval_s
        self.steps = 0

    def run_once(self) -> int:
        """Advance every open retrain as far as it goes now; how many steps were recorded."""
        n = 0
        for retrain_id in self.candidates.open():
            try:
                while self.commands.advance(retrain_id, DRIVER):  # a pass registers, and may export, at once
                    n += 1
            except Exception as e:  # one retrain's trouble (a model gone) stops no other; the next pass retries it
                log.warning("retrain %s: %s", retrain_id, printable(e, 300))
                self.stage.failed(e)
        self.steps += n
        return n

    async def run(self, stop: asyncio.Event) -> None:
        log.info("retrain driver started")
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.run_once)
                self.stage.progressed()
            except Exception as e:
                log.warning("retrain driver pass failed: %s", printable(e, 300))
                self.stage.failed(e)
                self.stage.tick()
            await stopped_within(stop, self.interval_s)
