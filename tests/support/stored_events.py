"""Events stored the way eventsourcing's mapper stores them, edited into an older or a now-invalid form, then
loaded back: how a test shows that what an earlier Trainyard wrote still loads under today's classes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

Edit = Callable[[str, dict[str, Any]], None]  # (topic, stored state) → None: changes the state in place


def store_and_load(aggregate: Aggregate, edit: Edit | None = None, topic: Callable[[str], str] | None = None
                   ) -> Aggregate:
    """`aggregate`'s pending events stored as the mapper would (each state first passed to `edit`, each topic
    through `topic`), then the aggregate loaded from them by a fresh application."""
    return store(aggregate, edit, topic).repository.get(aggregate.id)


def store_and_read(aggregate: Aggregate, edit: Edit | None = None, topic: Callable[[str], str] | None = None
                   ) -> list[Any]:
    """The same, but the events as a projection reads them back."""
    return list(store(aggregate, edit, topic).repository.event_store.get(aggregate.id))


def store(aggregate: Aggregate, edit: Edit | None, topic: Callable[[str], str] | None) -> Application:
    app = Application()
    mapper = app.mapper
    stored = []
    for domain_event in aggregate.collect_events():
        s = mapper.to_stored_event(domain_event)
        state = mapper.transcoder.decode(s.state)
        if edit:
            edit(s.topic, state)
        stored.append(StoredEvent(s.originator_id, s.originator_version, topic(s.topic) if topic else s.topic,
                                  mapper.transcoder.encode(state)))
    app.recorder.insert_events(stored)
    return app


def as_v1(event: str, *fields: str) -> Edit:
    """An edit that writes the first version of the events named `event` (the end of their topic, e.g.
    "TrainingJob.Submitted"): without `fields` and without a class version."""
    def edit(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith(f":{event}") or topic.endswith(f".{event}"):
            state.pop("class_version", None)
            for name in fields:
                state.pop(name, None)
    return edit
