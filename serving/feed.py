"""The inference server's deployment feed: deployments and API keys into `ServingState`, from the read model and
the event stream.

On start, and every `RELOAD_S` as a safety net, everything the read models say (`reload`); in between, each
`trainyard.v1.deployment.*` and `trainyard.v1.api_key.*` event as it comes, on the server's own durable consumer
(`follow`). A stale event (an older aggregate version) is ignored, so a redelivery or the overlap with the reload is
harmless; one the feed cannot use is dead-lettered (infra/consumer.py).
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field

from domain.api_key import ApiKey
from domain.contract import event_subject
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


class DeploymentReads(Protocol):
    """What the feed reloads from (projections/deployments.py DeploymentQueries): rows as the read model has them."""

    def list(self) -> list[dict[str, Any]]: ...

    def live_keys(self) -> list[dict[str, Any]]: ...


class FeedEvent(BaseModel):
    """The part of the public envelope the feed reads (docs/asyncapi.json); anything else is ignored."""

    model_config = ConfigDict(extra="ignore")
    aggregate: str = Field(max_length=50)
    aggregate_id: UUID
    aggregate_version: int = Field(ge=1, le=2**31 - 1)
    type: str = Field(max_length=100)
    payload: dict[str, Any]


class Feed:
    """Deployment and API-key changes, from the read model (reload) and the event stream (follow)."""

    def __init__(self, state: ServingState, queries: DeploymentReads, stage: Stage) -> None:
        self.state, self.queries, self.stage = state, queries, stage
        self.names: dict[UUID, str] = {}  # deployment id → name (Revised events carry only the id)

    def reload(self) -> None:
        """Everything the read model says now (blocking: loads ONNX sessions)."""
        for row in self.queries.list():
            self.names[row["id"]] = row["name"]
            self.state.apply_deployment({k: row[k] for k in ("name", "revision", "active", "variants", "shadow")},
                                        row["version"])
        live = {str(r["id"]): r for r in self.queries.live_keys()}
        for key_id, row in live.items():
            self.state.apply_key(key_id, row["version"], row)
        for key_id, state in list(self.state.keys.items()):  # revoked while we were not listening
            if state.key_id not in live:
                self.state.apply_key(state.key_id, state.version + 1, None)

    def apply(self, e: FeedEvent) -> None:
        """One event (blocking: may load ONNX sessions). ValueError/KeyError for a payload it cannot use."""
        p, version = e.payload, e.aggregate_version
        if e.aggregate == DEPLOYMENT:
            name = p.get("name") or self.names.get(e.aggregate_id)
            if e.type == "deployment.created":
                self.names[e.aggregate_id] = name
            if name is None:
                raise ValueError(f"deployment {e.aggregate_id}: unknown name (its created event never came)")
            if e.type == "deployment.deactivated":
                self.state.apply_deployment({"name": name, "active": False}, version)
            elif e.type in ("deployment.created", "deployment.revised"):
                self.state.apply_deployment({"name": name, "revision": p["revision"], "active": True,
                                             "variants": p["variants"], "shadow": p.get("shadow")}, version)
        elif e.aggregate == API_KEY:
            if e.type == "api_key.created":
                self.state.apply_key(str(e.aggregate_id), version, p)
            elif e.type == "api_key.revoked":
                self.state.apply_key(str(e.aggregate_id), version, None)

    async def handle(self, event: FeedEvent) -> None:
        await asyncio.to_thread(self.apply, event)

    async def follow(self, js: JetStreamContext, durable: str, stop: asyncio.Event) -> None:
        """The events on the durable consumer `durable` (made here: each server has its own), until `stop`."""
        config = ConsumerConfig(durable_name=durable, filter_subjects=FEED_SUBJECTS, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_deliver=-1)
        await js.add_consumer(EVENTS_STREAM, config)
        events: Consumer[FeedEvent] = Consumer(js, EVENTS_STREAM, durable, FeedEvent, self.stage, name="inference feed",
                                               max_bytes=MAX_EVENT_BYTES, in_progress_s=20.0,
                                               poison=(ValueError, KeyError, TypeError))  # a payload it cannot use
        await events.run(self.handle, stop, batch=100, timeout=0.5)

    async def reload_every(self, seconds: float, stop: asyncio.Event) -> None:
        while not await stopped_within(stop, seconds):
            try:
                await asyncio.to_thread(self.reload)
            except Exception as e:  # the database is away: the feed still runs
                self.stage.failed(e)
