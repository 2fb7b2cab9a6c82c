"""The Trainyard application: one event store and notification log for every aggregate, saves that carry who and
why (`CommandContext` as metadata), and `change`, the load → decide → save step every command service uses."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, LRUCache
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import RecordConflictError

from commands.context import CommandContext

log = logging.getLogger("trainyard.commands")
ANONYMOUS = CommandContext()
CompletionEffect = Callable[[Any], list[Aggregate]]


class Saved(NamedTuple):
    """What a command saved: the aggregate as saved, and the notification id of the last event it recorded (None
    when the decision recorded nothing), which the API waits for to read its own writes."""
    aggregate: Any
    position: int | None


def last_position(recordings: list[Any]) -> int | None:
    return recordings[-1].notification.id if recordings else None


ORIGINS_KEPT = 10_000  # first-event metadata remembered per process (`TrainyardApplication.origin`)


class TrainyardApplication(Application[UUID]):
    """Saves with metadata; the base of every Trainyard application (one event store, one notification log)."""

    name = "trainyard"
    on_saved: Callable[[list[Any]], None] | None = None  # told each committed save's recordings (serve: EagerWork)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._origins: LRUCache[UUID, dict[str, Any]] = LRUCache(maxsize=ORIGINS_KEPT)
        self._completion_effects: dict[str, CompletionEffect] = {}

    def on_completion(self, work_kind: str, effect: CompletionEffect) -> None:
        """Register what else changes when work of `work_kind` completes: `effect(work)` returns the other
        aggregates it changed, saved in the completion's transaction (commands/models.py registers the export's)."""
        self._completion_effects[work_kind] = effect

    def completion_effects(self, work: Any) -> list[Aggregate]:
        effect = self._completion_effects.get(work.work_kind)
        return effect(work) if effect is not None else []

    def load(self, aggregate_id: UUID, not_found: Callable[[str], LookupError], copy: bool = True) -> Any:
        """The aggregate, from the cache (fast-forwarded) or the store. `copy=False` skips the cache's deep copy
        (a study's copies every trial): only for readers that never change the object they get. `not_found(id)`
        is the error raised when there is none (an aggregate named by the user says the name, not the id)."""
        try:
            return self.repository.get(aggregate_id, deepcopy_from_cache=copy)
        except AggregateNotFoundError:
            raise not_found(str(aggregate_id)) from None

    def change(self, aggregate_id: UUID, decide: Callable[[Any], None], ctx: CommandContext,
               not_found: Callable[[str], LookupError], tries: int = 5,
               also: Callable[[Any], list[Aggregate]] | None = None) -> Saved:
        """Load → decide → save, retried on an optimistic-concurrency conflict. Returns the aggregate and the
        notification id of the last event recorded (None if the decision recorded nothing). `also(aggregate)`
        (after the decision) returns other aggregates it changed in consequence: all are saved in one transaction."""
        for n in range(tries):
            aggregate = self.load(aggregate_id, not_found)
            decide(aggregate)
            companions = also(aggregate) if also else []
            try:
                return Saved(aggregate, last_position(self.save_with(ctx, aggregate, *companions)))
            except RecordConflictError:
                if n == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def save_with(self, ctx: CommandContext, *aggregates: Aggregate) -> list[Any]:
        """Save with who and why in each event's metadata, and the project of a project-scoped aggregate (its
        `project`), which the public envelope carries so subscribers can filter by project."""
        meta = ctx.as_metadata()
        created = []
        for aggregate in aggregates:
            project = getattr(aggregate, "project", None)
            event_meta = {**meta, "project": project} if isinstance(project, str) else meta
            for e in aggregate.pending_events:
                object.__setattr__(e, "metadata", event_meta)
                if e.originator_version == 1:
                    created.append(aggregate.id)
        recordings = self.save(*aggregates)
        for aggregate_id in created:
            self._origins.put(aggregate_id, meta)
        if self.on_saved is not None:
            try:
                self.on_saved(recordings)
            except Exception:  # a shortcut only (projections/relay.EagerWork): never fails a command that committed
                log.exception("on_saved hook failed")
        return recordings

    def origin(self, aggregate_id: UUID) -> dict[str, Any]:
        """The metadata of the aggregate's first event (the creating command's actor, correlation and trace ids).
        It never changes: remembered for the aggregates this process created or looked up (a claim's answer carries
        it; reading the first event was a query on every claim)."""
        try:
            return self._origins.get(aggregate_id)
        except KeyError:
            first = next(iter(self.events.get(aggregate_id, lte=1)), None)
        meta = dict(getattr(first, "metadata", None) or {})
        if first is not None:
            self._origins.put(aggregate_id, meta)
        return meta

    def head(self) -> int:
        """The notification id of the newest event (0 for an empty store)."""
        return self.recorder.max_notification_id() or 0
