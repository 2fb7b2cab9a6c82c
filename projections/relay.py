"""The relay: follows the event store's notification log and publishes every event to JetStream.

A submitted job's event is also published as a work item for the runners (infra/messaging.py).
At least once, in log order: each event is published with `Nats-Msg-Id` = its event id and the
relay's position is saved only after the PubAcks of a batch. A crash between the two re-publishes
that batch, and JetStream's duplicate window (hours, see infra/messaging.py) absorbs the repeats.
Consumers still dedupe by (aggregate_id, aggregate_version): the window is not forever.
"""
from __future__ import annotations

import asyncio
import json
import logging

from eventsourcing.application import Application
from nats.js import JetStreamContext
from psycopg_pool import ConnectionPool

from domain.contract import envelope
from infra.messaging import work_item

log = logging.getLogger("trainyard.relay")

POSITIONS_DDL = "CREATE TABLE IF NOT EXISTS relay_positions (name text PRIMARY KEY, position bigint NOT NULL)"


class Relay:
    def __init__(self, app: Application, js: JetStreamContext, pool: ConnectionPool,
                 name: str = "events", batch_size: int = 500, idle_sleep_s: float = 0.05) -> None:
        self.app, self.js, self.pool, self.name = app, js, pool, name
        self.batch_size, self.idle_sleep_s = batch_size, idle_sleep_s
        self._position: int | None = None
        with pool.connection() as conn:
            conn.execute(POSITIONS_DDL)

    def position(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT position FROM relay_positions WHERE name = %s", (self.name,)).fetchone()
        return row[0] if row else 0

    def _save_position(self, position: int) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO relay_positions (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (self.name, position),
            )

    async def publish_batch(self) -> int:
        """Publish the next batch after the saved position; returns how many events went out."""
        if self._position is None:
            self._position = await asyncio.to_thread(self.position)
        notifications = await asyncio.to_thread(
            self.app.recorder.select_notifications, start=self._position, limit=self.batch_size,
            inclusive_of_start=False)
        for n in notifications:
            subject, body = envelope(self.app.mapper.to_domain_event(n))
            data = json.dumps(body).encode()
            await self.js.publish(subject, data, headers={"Nats-Msg-Id": body["event_id"]})
            if work := work_item(subject, body):  # the event's work item goes out under the same position
                await self.js.publish(work[0], data, headers={"Nats-Msg-Id": work[1]})
        if notifications:
            await asyncio.to_thread(self._save_position, notifications[-1].id)
            self._position = notifications[-1].id
        return len(notifications)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("relay %s started at position %d", self.name, await asyncio.to_thread(self.position))
        while not stop.is_set():
            try:
                sent = await self.publish_batch()
            except Exception:  # NATS or PostgreSQL away: re-read the saved position, try again
                log.exception("relay batch failed; retrying")
                self._position = None
                sent = 0
                await asyncio.sleep(1.0)
            if not sent:
                try:
                    await asyncio.wait_for(stop.wait(), self.idle_sleep_s)
                except TimeoutError:
                    pass
