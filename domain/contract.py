"""Domain events as the public contract: subjects and JSON envelopes (docs/events.md).

Every event is published on `trainyard.v1.<aggregate>.<event>` (snake case, e.g.
`trainyard.v1.training_job.completed`) with a stable envelope. `event_id` is derived from
(aggregate_id, aggregate_version), so re-publishing an event gives it the same id and JetStream's
duplicate window (keyed on `Nats-Msg-Id` = event_id) absorbs it.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

SUBJECT_PREFIX = "trainyard.v1"
_ENVELOPE_KEYS = ("originator_id", "originator_version", "timestamp", "originator_topic")
_EVENT_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/events")


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid5(_EVENT_NAMESPACE, f"{aggregate_id}:{version}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def envelope(domain_event: Any) -> tuple[str, dict[str, Any]]:
    """(subject, JSON-ready envelope) of an eventsourcing domain event."""
    aggregate, name = type(domain_event).__qualname__.split(".")[-2:]
    aggregate, name = snake(aggregate), snake(name)
    payload = {k: _jsonable(v) for k, v in domain_event.__dict__.items() if k not in _ENVELOPE_KEYS}
    body = {
        "event_id": str(event_id(domain_event.originator_id, domain_event.originator_version)),
        "aggregate": aggregate,
        "aggregate_id": str(domain_event.originator_id),
        "aggregate_version": domain_event.originator_version,
        "occurred_at": domain_event.timestamp.isoformat(),
        "type": f"{aggregate}.{name}",
        "trace_id": payload.pop("trace_id", None),
        "payload": payload,
    }
    return f"{SUBJECT_PREFIX}.{aggregate}.{name}", body
