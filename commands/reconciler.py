"""The reconciler: regularly compares jobs with their leases and the work stream, and repairs what a lost message or
a dead runner left behind, each repair a command with an event that says why (part of `trainyard serve`).

- A lease past its expiry (its runner stopped heartbeating): `expire_lease` → the job is requeued, or failed once
  its `max_attempts` leases are lost.
- A running job with no lease row at all (the row was lost between the claim and its write): likewise, after
  twice the lease ttl.
- A running job whose cancel request did not reach its lease row: the flag is set, the next heartbeat hears it.
- A queued job or model export with no work item on the work stream for `requeue_after_s` (a lost publish, a
  purged stream): `requeue` → the relay publishes a new work item.
It reads the read models and the stream only to find candidates; the aggregate decides, so a stale read or a second
reconciler is harmless (a repeat is a no-op or refused).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

from commands.context import SYSTEM
from commands.training import TrainingApplication
from domain.contract import printable
from domain.training_job import JobError
from infra.health import Stage, stopped_within
from infra.leases import LeaseStore

log = logging.getLogger("trainyard.reconciler")


class RepairCandidates(Protocol):
    """The read models, as the reconciler reads them (projections/work_queries.py WorkQueries)."""

    def orphaned_leases(self, older_than_s: float) -> list[tuple[UUID, str]]:
        """(job id, lease id) of running jobs with no lease row, unchanged for `older_than_s`."""
        ...

    def queued_since(self, older_than_s: float) -> list[UUID]:
        """Ids of queued jobs and model exports unchanged for `older_than_s`."""
        ...


class WorkQueue(Protocol):
    """The work stream, as the reconciler asks it (infra/messaging.py WorkStream)."""

    async def queued_ids(self) -> set[str]:
        """The aggregate ids that have a work item on the stream now."""
        ...


class Reconciler:
    def __init__(self, app: TrainingApplication, leases: LeaseStore, candidates: RepairCandidates, work: WorkQueue,
                 stage: Stage, interval_s: float = 2.0, requeue_after_s: float = 30.0) -> None:
        self.app, self.leases, self.candidates, self.work = app, leases, candidates, work
        self.stage, self.interval_s, self.requeue_after_s = stage, interval_s, requeue_after_s
        self.repairs = 0

    def expire_leases(self) -> int:
        n = 0
        for lease in self.leases.expired():
            reason = f"runner {lease.runner_id} stopped renewing its lease"
            self._repair(lambda: self.app.expire_lease(lease.job_id, lease.lease_id, reason,
                                                       SYSTEM.caused_by(f"lease:{lease.lease_id}")))
            self.leases.drop(lease.job_id, lease.lease_id)
            n += 1
        for job_id, lease_id in self.candidates.orphaned_leases(2 * self.leases.ttl_s):
            self._repair(lambda: self.app.expire_lease(job_id, lease_id, "its lease was never renewed",
                                                       SYSTEM.caused_by(f"lease:{lease_id}")))
            n += 1
        return n

    async def requeue_missing_work(self) -> int:
        candidates = await asyncio.to_thread(self.candidates.queued_since, self.requeue_after_s)
        if not candidates:
            return 0
        present = await self.work.queued_ids()
        missing = [job_id for job_id in candidates if str(job_id) not in present]
        for job_id in missing:
            await asyncio.to_thread(self._repair, lambda: self.app.requeue(
                job_id, "its work item was missing from the work stream", SYSTEM))
        return len(missing)

    def _repair(self, command: Callable[[], object]) -> None:
        """Run one repair command; a job that moved on since the read refuses it, which is fine."""
        try:
            command()
            self.repairs += 1
        except JobError:
            pass  # the job moved on since the read: nothing to repair

    async def run(self, stop: asyncio.Event) -> None:
        log.info("reconciler started (every %.1fs)", self.interval_s)
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.leases.sync_cancel_flags)
                expired = await asyncio.to_thread(self.expire_leases)
                requeued = await self.requeue_missing_work()
                if expired or requeued:
                    log.warning("reconciler: %d lost leases handled, %d queued jobs given a new work item",
                                expired, requeued)
                self.stage.progressed()
            except Exception as e:
                log.warning("reconciler pass failed: %s", printable(e, 300))
                self.stage.failed(e)
                self.stage.tick()
            await stopped_within(stop, self.interval_s)
