"""The relay: follows the event store's notification log and publishes every event to JetStream.

Routing is by the aggregate registry (domain/registry.py): each event goes to `trainyard.v1.<aggregate>.<event>`,
and an event that puts its aggregate in the queue also goes out as a `WorkItem` on
`trainyard.work.<priority>.<kind>.<id>` (`trainyard.work.<priority>.gpu.<kind>.<id>` for work that needs a GPU)
under the same log position. At least once, in log order: `Nats-Msg-Id` =
event id, and the position is saved after the PubAcks. A crash re-publishes from the saved position and JetStream's
duplicate window (hours) absorbs the repeats; consumers still dedupe by (aggregate_id, aggregate_version).

Poison policy: an event that cannot be published (too big for NATS, not encodable, refused by the server) is tried
`max_tries` times, then set aside: a small tombstone goes to `trainyard.v1.dlq.<aggregate>.<event>`, a row to
`relay_poisoned`, and the relay moves on. Transient trouble (NATS or PostgreSQL away) is retried forever from the
saved position, and the stage's health shows the lag growing.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from nats.errors import BadSubjectError, MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError
from psycopg_pool import ConnectionPool

from domain.contract import SUBJECT_PREFIX, WORK_READY, WorkItem, dlq_subject, envelope, printable, work_subject
from domain.registry import aggregate_of, needs_gpu, queues_work, resumes_from
from infra.health import Stage
from infra.postgres import listen

log = logging.getLogger("trainyard.relay")

POSITIONS_DDL = """
CREATE TABLE IF NOT EXISTS relay_positions (name text PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS relay_poisoned (
    name text NOT NULL, position bigint NOT NULL, event_id text, error text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, position));
"""


class PoisonEvent(Exception):
    """This event can never be published as it is."""


def _is_poison(exc: BaseException) -> bool:
    if isinstance(exc, (MaxPayloadError, BadSubjectError, PoisonEvent)):
        return True
    return isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError) and (exc.code or 0) < 500


def encode(event: Any) -> list[tuple[str, bytes, str]]:
    """The messages (subject, data, Nats-Msg-Id) one domain event becomes; PoisonEvent if it cannot be encoded."""
    try:
        registered = aggregate_of(event)
        if not registered.public:
            return []
        subject, body = envelope(event, registered.name)
        out = [(subject, json.dumps(body, allow_nan=False).encode(), body["event_id"])]
        if work := queues_work(event):
            kind, priority = work
            item = WorkItem(kind=kind, aggregate_id=event.originator_id, priority=priority, work_id=body["event_id"],
                            resume_of=resumes_from(event))
            subject = work_subject(priority, kind, event.originator_id, gpu=needs_gpu(event))
            out.append((subject, item.model_dump_json(exclude_none=True).encode(), f"work:{body['event_id']}"))
        return out
    except Exception as e:
        raise PoisonEvent(f"cannot encode {type(event).__qualname__}: {type(e).__name__}: {e}") from e


class EagerWork:
    """Work items out at once. Set as the application's `on_saved` in the process that runs the relay: with the
    recordings of a save that has committed (on the saving thread) it publishes their work items to JetStream from
    the relay's loop and rings the runners' doorbell, without waiting for the relay's NOTIFY → read → publish round.
    Only a shortcut: the relay publishes the same items again under the same `Nats-Msg-Id`, which JetStream's
    duplicate window drops (and a work item seen twice is refused by the lease anyway); a failure here is ignored,
    the relay is the guarantee."""

    def __init__(self, js: JetStreamContext, loop: asyncio.AbstractEventLoop) -> None:
        self.js, self.loop = js, loop

    def __call__(self, recordings: list[Any]) -> None:
        items = []
        for recording in recordings:
            event = recording.domain_event
            if queues_work(event):
                with contextlib.suppress(PoisonEvent):
                    items.extend(encode(event)[1:])
        if items and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is stopping
                asyncio.run_coroutine_threadsafe(self._publish(items), self.loop)

    async def _publish(self, items: list[tuple[str, bytes, str]]) -> None:
        # Not waiting for JetStream's acks: the server takes one connection's messages in order, so the items are
        # in the stream by the time a runner woken by the doorbell looks (and if one is not, the relay's publish,
        # acknowledged, rings again).
        nc = self.js._nc
        try:
            for subject, data, msg_id in items:
                await nc.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            await nc.publish(WORK_READY, b"")
        except Exception as e:
            log.debug("eager work publish failed (%s); the relay will publish it", type(e).__name__)


class Relay:
    """`run` wakes up on the event store's own NOTIFY (one LISTEN connection), so an event goes out within a few
    milliseconds of its commit; `idle_sleep_s` is only the fallback poll."""

    def __init__(self, app: Any, js: JetStreamContext, pool: ConnectionPool, stage: Stage | None = None,
                 name: str = "events", batch_size: int = 500, idle_sleep_s: float = 0.5, max_tries: int = 3) -> None:
        self.app, self.js, self.pool, self.name = app, js, pool, name
        self.stage = stage or Stage(f"relay:{name}", loops=True)
        self.batch_size, self.idle_sleep_s, self.max_tries = batch_size, idle_sleep_s, max_tries
        self._position: int | None = None
        with pool.connection() as conn:
            conn.execute(POSITIONS_DDL)

    def position(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT position FROM relay_positions WHERE name = %s", (self.name,)).fetchone()
        return row[0] if row else 0

    def _save_position(self, position: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO relay_positions (name, position) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET position = excluded.position", (self.name, position))

    def _set_aside(self, position: int, event_id: str | None, error: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO relay_poisoned (name, position, event_id, error) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (self.name, position, event_id, error))

    async def _publish(self, n: Any) -> bool:
        """Publish one notification (with its work item), retrying a poison `max_tries` times, then setting it aside.
        True if a work item went out."""
        event, error = None, ""
        for attempt in range(self.max_tries):
            try:
                event = self.app.mapper.to_domain_event(n)
                messages = encode(event)
                for subject, data, msg_id in messages:
                    await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
                return len(messages) > 1
            except Exception as e:
                if not _is_poison(e):
                    raise
                error = printable(f"{type(e).__name__}: {e}", 500)
                await asyncio.sleep(0.1 * (attempt + 1))
        subject, eid = f"{SUBJECT_PREFIX}.undecodable", None  # the stored event could not even be read back
        if event is not None:
            with contextlib.suppress(Exception):
                subject, body = envelope(event, aggregate_of(event).name)
                eid = body["event_id"]
        log.error("relay %s: event at position %d set aside after %d tries: %s", self.name, n.id, self.max_tries, error)
        tombstone = {"position": n.id, "event_id": eid, "aggregate_id": str(n.originator_id),
                     "aggregate_version": n.originator_version, "topic": n.topic, "error": error}
        await self.js.publish(dlq_subject(subject), json.dumps(tombstone).encode(),
                              headers={"Nats-Msg-Id": f"poison:{self.name}:{n.id}", "Trainyard-Error": error[:200]})
        await asyncio.to_thread(self._set_aside, n.id, eid, error)
        self.stage.poisoned_one(error)
        return False

    async def publish_batch(self) -> int:
        """Publish the next batch after the saved position; returns how many events went out."""
        if self._position is None:
            self._position = await asyncio.to_thread(self.position)
        notifications = await asyncio.to_thread(
            self.app.recorder.select_notifications, start=self._position, limit=self.batch_size,
            inclusive_of_start=False)
        done = None
        try:
            for n in notifications:
                if await self._publish(n):  # ring the idle runners' doorbell at once, not after the batch is saved
                    with contextlib.suppress(Exception):  # (a hint: they look at the work stream themselves)
                        await self.js._nc.publish(WORK_READY, b"")
                done = n.id
        finally:
            if done is not None:
                await asyncio.to_thread(self._save_position, done)
                self._position = done
        head = self._position if len(notifications) < self.batch_size else await asyncio.to_thread(self.app.head)
        self.stage.observe(self._position, head)
        return len(notifications)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("relay %s started at position %d", self.name, await asyncio.to_thread(self.position))
        loop, wake, stop_listening = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
        listen(self.pool.conninfo, self.app.recorder.channel_name, lambda _: loop.call_soon_threadsafe(wake.set),
               stop_listening, lambda: loop.call_soon_threadsafe(wake.set), name="relay-listen")
        try:
            await self._loop(stop, wake)
        finally:
            stop_listening.set()

    async def _loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        while not stop.is_set():
            wake.clear()
            try:
                sent = await self.publish_batch()
            except Exception as e:  # NATS or PostgreSQL away: re-read the saved position, try again
                log.warning("relay batch failed (%s); retrying", printable(e, 200))
                self.stage.failed(e)
                self._position = None
                sent = 0
                try:
                    self.stage.observe(await asyncio.to_thread(self.position), await asyncio.to_thread(self.app.head))
                except Exception:
                    self.stage.tick()
                await asyncio.sleep(1.0)
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.idle_sleep_s)
