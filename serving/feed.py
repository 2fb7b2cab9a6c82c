"""The inference server's deployment feed: deployments and API keys into `ServingState`, from the read models.

Anyone who reaches NATS can publish on `trainyard.v1.deployment.*` and `trainyard.v1.api_key.*` (design decision
10), so nothing an event says is applied: the state served is always what the read models (PostgreSQL, written by
the service's projectors from the event store) say.
- `reload`, on start and every `RELOAD_S`, replaces the served state wholesale with the read models' (so whatever
  went wrong is repaired within the period);
- each event on the server's own durable consumer (`follow`) is a hint that its aggregate changed: once the read
  model has reached the event's aggregate version, the feed reloads. An event the read model has not reached is
  retried with a growing delay (the projector may simply be behind the relay) and, never confirmed, dead-lettered
  (infra/consumer.py): a forged event changes nothing but the dead-letter count.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Protocol
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from domain.api_key import ApiKey
from domain.contract import event_subject, scoped
from domain.deployment import Deployment
from domain.registry import AGGREGATES
from infra.consumer import Consumer
from infra.health import Stage, stopped_within
from infra.messaging import EVENTS_STREAM
from serving.state import ServingState

RELOAD_S = 10.0
DEPLOYMENT, API_KEY = (next(a.name for a in AGGREGATES if a.cls is cls) for cls in (Deployment, ApiKey))
FEED_SUBJECTS = [event_subject(DEPLOYMENT, ">"), event_subject(API_KEY, ">")]
MAX_EVENT_BYTES = 4 * 1024 * 1024
CONSUMER_CHECK_S = 5.0  # how often the feed checks that its durable consumer still exists
# An event the read model has not reached is tried again after 0.05 s, 0.1 s, … (at most 1 s apart), about 8 s in
# all, then dead-lettered: long enough for a projector that is behind, short enough to keep forgeries visible.
CONFIRM_DELIVERIES = 12


def confirm_delay(deliveries: int) -> float:
    return min(1.0, 0.05 * 2 ** (deliveries - 1))


class NotConfirmed(Exception):
    """The read model has not (yet) reached this event: retried, then dead-lettered."""


class DeploymentReads(Protocol):
    """What the feed reloads from (projections/deployments.py DeploymentQueries): rows as the read model has them."""

    def every(self) -> list[dict[str, Any]]: ...

    def live_keys(self) -> list[dict[str, Any]]: ...

    def aggregate_version(self, aggregate_id: UUID) -> int | None: ...


class FeedEvent(BaseModel):
    """The part of the public envelope the feed reads (docs/asyncapi.json); anything else is ignored."""

    model_config = ConfigDict(extra="ignore")
    aggregate: str = Field(max_length=50)
    aggregate_id: UUID
    aggregate_version: int = Field(ge=1, le=2**31 - 1)
    type: str = Field(max_length=100)
    payload: dict[str, Any]


class Feed:
    """Deployment and API-key state from the read models: wholesale (reload), and on each event's hint (follow)."""

    def __init__(self, state: ServingState, queries: DeploymentReads, stage: Stage) -> None:
        self.state, self.queries, self.stage = state, queries, stage
        self._lock = threading.Lock()  # the periodic reload and the hints run on worker threads
        # Aggregate id → the version the served state reflects (from the read model): a hint at or below it (a
        # redelivery, or the replay of old events a new durable consumer starts with) needs no look-up.
        self.seen: dict[UUID, int] = {}

    def reload(self) -> None:
        """Everything the read model says now, replacing what is served (blocking: loads ONNX sessions)."""
        with self._lock:  # read and apply as one: an older read applied after a newer one would go back
            rows = self.queries.every()  # every project's: each served under its scoped key
            keys = self.queries.live_keys()
            for row in rows:
                if row["active"]:
                    self.state.apply_deployment({k: row[k] for k in ("name", "project", "revision", "active",
                                                                     "variants", "shadow")}, row["version"],
                                                replace=True)
            self.state.remove_deployments({scoped(row["project"], row["name"]) for row in rows if row["active"]})
            self.state.sync_keys(keys)
            for row in (*rows, *keys):
                self.seen[row["id"]] = max(self.seen.get(row["id"], 0), int(row["version"]))

    def apply(self, e: FeedEvent) -> None:
        """One event's hint (blocking): reload once the read model has reached it, else NotConfirmed."""
        if e.aggregate not in (DEPLOYMENT, API_KEY):
            return
        if self.seen.get(e.aggregate_id, 0) >= e.aggregate_version:
            return
        have = self.queries.aggregate_version(e.aggregate_id)
        if have is None or have < e.aggregate_version:
            # The feed works; the event is what is in doubt. Whoever can publish must not make the server
            # unready with forgeries: they show as retries, then as dead letters.
            self.stage.progressed()
            raise NotConfirmed(f"{e.type} of {e.aggregate_id} v{e.aggregate_version}: the read model has "
                               f"{'no such aggregate' if have is None else f'v{have}'}")
        self.reload()
        with self._lock:
            self.seen[e.aggregate_id] = max(self.seen.get(e.aggregate_id, 0), have)

    async def handle(self, event: FeedEvent) -> None:
        await asyncio.to_thread(self.apply, event)

    async def follow(self, js: JetStreamContext, durable: str, stop: asyncio.Event) -> None:
        """The events on the durable consumer `durable` (made here: each server has its own), until `stop`."""
        config = ConsumerConfig(durable_name=durable, filter_subjects=FEED_SUBJECTS, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_deliver=-1)
        await js.add_consumer(EVENTS_STREAM, config)
        checked = [time.monotonic()]

        async def still_there() -> None:
            """The consumer (or the whole stream) may be deleted by anyone on the bus: make it again (serve makes
            the stream again); meanwhile the periodic reload keeps the state right."""
            if time.monotonic() - checked[0] < CONSUMER_CHECK_S:
                return
            checked[0] = time.monotonic()
            try:
                await js.consumer_info(EVENTS_STREAM, durable)
            except NotFoundError:
                try:
                    await js.add_consumer(EVENTS_STREAM, config)
                    self.stage.failed(f"recreated consumer {EVENTS_STREAM}/{durable} (it had vanished)")
                    self.stage.progressed()  # repaired: shown in last_error, not a reason to be unready
                except NotFoundError:
                    self.stage.failed(f"stream {EVENTS_STREAM} is missing; waiting for it")
            except Exception as e:  # NATS away: it reconnects
                self.stage.failed(e)

        events: Consumer[FeedEvent] = Consumer(js, EVENTS_STREAM, durable, FeedEvent, self.stage, name="inference feed",
                                               max_bytes=MAX_EVENT_BYTES, in_progress_s=20.0,
                                               max_deliveries=CONFIRM_DELIVERIES, retry_delay=confirm_delay)
        await events.run(self.handle, stop, batch=100, timeout=0.5, between=still_there)

    async def reload_every(self, seconds: float, stop: asyncio.Event) -> None:
        while not await stopped_within(stop, seconds):
            try:
                await asyncio.to_thread(self.reload)
            except Exception as e:  # the database is away: the feed still runs
                self.stage.failed(e)
