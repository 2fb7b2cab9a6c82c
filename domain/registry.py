"""The aggregate registry: what the one pipeline (relay, streams, work routing) knows of each aggregate type.

A new aggregate plugs in by adding an `AggregateType` here: its public subject name, and which of its events
put it in a runner's queue (as a work item of its `work_kind`, at the priority the event carries; a training job
that runs the user's code is queued as kind "code", which only runners that accept code consume; work whose
resources ask for a GPU goes one level deeper, `trainyard.work.<priority>.gpu.<kind>.<id>`, which only GPU
runners consume). The relay,
the NATS streams and the runners' work dispatch read this table; none of them names an aggregate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domain.api_key import ApiKey
from domain.contract import event_subject
from domain.deployment import Deployment
from domain.identity import ApiToken, Project, ServiceAccount, Session, User
from domain.models import ModelExport, RegisteredModel
from domain.resources import gpus_of
from domain.retrain import Retrain
from domain.schedule import Schedule
from domain.study import Study
from domain.training_job import TrainingJob
from domain.vocabulary import WorkKind


@dataclass(frozen=True)
class AggregateType:
    cls: type
    name: str  # snake case: the `<aggregate>` of `trainyard.v1.<aggregate>.<event>`
    work_kind: WorkKind | None = None
    work_events: frozenset[str] = field(default_factory=frozenset)  # event class names that queue work
    public: bool = True  # its events go out on `trainyard.v1.<name>.<event>`; private ones stay in the store


AGGREGATES: tuple[AggregateType, ...] = (
    AggregateType(TrainingJob, "training_job", work_kind=WorkKind.TRAINING, work_events=frozenset({"Submitted", "Requeued"})),
    AggregateType(Study, "study"),  # its trials are training jobs: no work kind of its own
    AggregateType(RegisteredModel, "model"),
    AggregateType(ModelExport, "model_export", work_kind=WorkKind.EXPORT, work_events=frozenset({"Requested", "Requeued"})),
    AggregateType(Deployment, "deployment"),
    AggregateType(ApiKey, "api_key"),
    AggregateType(Schedule, "schedule"),  # its runs are training jobs and studies: no work kind of its own
    AggregateType(Retrain, "retrain"),  # its job is a training job: no work kind of its own
    # Identity stays off the bus: its events hold password and token hashes, and nothing outside needs them.
    AggregateType(User, "user", public=False),
    AggregateType(ServiceAccount, "service_account", public=False),
    AggregateType(Project, "project", public=False),
    AggregateType(ApiToken, "api_token", public=False),
    AggregateType(Session, "session", public=False),
)
PUBLIC_AGGREGATES = tuple(a for a in AGGREGATES if a.public)
_BY_CLASS = {a.cls: a for a in AGGREGATES}


def aggregate_of(domain_event: Any) -> AggregateType:
    """The registered type whose event this is; LookupError for an event of an unregistered aggregate."""
    for klass in type(domain_event).__mro__:
        owner = getattr(klass, "__qualname__", "").split(".")[0]
        for cls, registered in _BY_CLASS.items():
            if cls.__name__ == owner and klass.__module__ == cls.__module__:
                return registered
    raise LookupError(f"{type(domain_event).__qualname__} belongs to no registered aggregate")


def queues_work(domain_event: Any) -> tuple[str, str] | None:
    """(work kind, priority) if this event puts its aggregate in the queue, else None."""
    registered = aggregate_of(domain_event)
    if registered.work_kind and type(domain_event).__name__ in registered.work_events:
        return _kind_of(domain_event, registered.work_kind), domain_event.priority
    return None


def needs_gpu(domain_event: Any) -> bool:
    """Whether the work this event queues goes to GPU runners only (`trainyard.work.<p>.gpu.<kind>.<id>`): a
    submit whose resources ask for a GPU, a requeue that says so."""
    if isinstance(domain_event, TrainingJob.Submitted):
        return gpus_of(domain_event.resources) > 0
    return int(getattr(domain_event, "gpus", 0) or 0) > 0


def _kind_of(domain_event: Any, default: WorkKind) -> str:
    """The queue an event's work goes to: a requeue names it; a code job's submit goes to "code"."""
    if isinstance(domain_event, TrainingJob.Submitted):
        return WorkKind.CODE if domain_event.code is not None else default
    if type(domain_event).__name__ == "Requeued":
        return domain_event.work_kind or default
    return default


def resumes_from(domain_event: Any) -> Any:
    """The job whose latest checkpoint the work this event queues starts from: a retry's original when it was
    submitted with `from_checkpoint` (its later attempts find their own checkpoints), else None."""
    if isinstance(domain_event, TrainingJob.Submitted) and domain_event.from_checkpoint:
        return domain_event.retry_of
    return None


def event_subjects() -> list[str]:
    """The subjects of every registered aggregate's events (the events stream captures these)."""
    return [event_subject(a.name, ">") for a in PUBLIC_AGGREGATES]
