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
from uuid import UUID

from nats.js import JetStreamContext
from psycopg_pool import ConnectionPool

from commands.context import SYSTEM
from infra.leases import LeaseStore
from commands.training import TrainingApplication
from domain.contract import WORK_PREFIX, printable
from domain.training_job import JobError
from infra.health import Stage, stopped_within

log = logging.getLogger("trainyard.reconciler")


class Reconciler:
    def __init__(self, app: TrainingApplication, leases: LeaseStore, pool: ConnectionPool, js: JetStreamContext,
                 work_stream: str, stage: Stage, interval_s: float = 2.0, requeue_after_s: float = 30.0) -> None:
        self.app, self.leases, self.pool, self.js, self.work_stream = app, leases, pool, js, work_stream
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
        with self.pool.connection() as conn:
            orphans = conn.execute(
                "SELECT id, lease_id FROM jobs WHERE status = 'running' AND lease_id IS NOT NULL "
                "AND updated_at < now() - make_interval(secs => %s) "
                "AND NOT EXISTS (SELECT 1 FROM job_leases l WHERE l.job_id = jobs.id) LIMIT 500",
                (2 * self.leases.ttl_s,)).fetchall()
        for job_id, lease_id in orphans:
            self._repair(lambda: self.app.expire_lease(job_id, lease_id, "its lease was never renewed",
                                                       SYSTEM.caused_by(f"lease:{lease_id}")))
            n += 1
        return n

    async def requeue_missing_work(self) -> int:
        def queued() -> list[UUID]:
            with self.pool.connection() as conn:
                return [r[0] for r in conn.execute(
                    "(SELECT id, updated_at FROM jobs WHERE status = 'queued' "
                    "AND updated_at < now() - make_interval(secs => %(s)s) ORDER BY updated_at LIMIT 1000) UNION ALL "
                    "(SELECT id, updated_at FROM model_exports WHERE status = 'queued' "
                    "AND updated_at < now() - make_interval(secs => %(s)s) ORDER BY updated_at LIMIT 1000)",
                    {"s": self.requeue_after_s}).fetchall()]

        candidates = await asyncio.to_thread(queued)
        if not candidates:
            return 0
        info = await self.js.stream_info(self.work_stream, subjects_filter=f"{WORK_PREFIX}.>")
        present = {s.rsplit(".", 1)[-1] for s in (info.state.subjects or {})}
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
