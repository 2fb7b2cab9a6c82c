"""The AsyncAPI description of Trainyard's public subjects, generated with FastStream from pydantic models.

`python -m api.asyncapi > docs/asyncapi.json` regenerates it (keys sorted: FastStream's order varies); a test checks the committed file is current and
that every event the domain emits validates against its model here (docs/events.md is the prose version).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, ConfigDict

from domain.contract import MetricBatch, WorkItem

P = TypeVar("P", bound=BaseModel)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Submitted(_Payload):
    name: str
    framework: Literal["lightgbm", "pytorch"]
    task: Literal["binary_classification", "multiclass_classification", "regression"]
    dataset: dict[str, Any]
    params: dict[str, Any]
    priority: Literal["low", "medium", "high", "critical"]
    tags: list[str]
    timeout_s: int
    max_attempts: int
    study_id: str | None = None
    trial_number: int | None = None
    report_metric: str | None = None


class Started(_Payload):
    """A runner claimed the job: attempt N under a new lease (`lease_id` is a digest; the token stays private)."""
    attempt: int
    runner_id: str
    previous_runner_id: str | None
    lease_id: str | None


class Requeued(_Payload):
    """Back in the queue: handed back by a stopping runner (`lost` false, no attempt spent), its lease expired
    (`lost` true, one of `max_attempts` spent), or its work item went missing. A work item follows."""
    attempt: int
    reason: str
    lost: bool
    lost_leases: int
    priority: Literal["low", "medium", "high", "critical"]


class LeaseLost(_Payload):
    """The last lease the job could lose: a `failed` event follows."""
    attempt: int
    reason: str
    lost_leases: int


class ProgressReported(_Payload):
    attempt: int
    current_step: int
    total_steps: int


class Completed(_Payload):
    attempt: int
    final_metrics: dict[str, float]
    artifact: dict[str, Any]
    total_steps: int | None = None


class Failed(_Payload):
    attempt: int
    error: str


class CancelRequested(_Payload):
    attempt: int
    runner_id: str | None


class Cancelled(_Payload):
    attempt: int
    reason: str


# ---- study ------------------------------------------------------------------------------------------
class StudyCreated(_Payload):
    """A study was created: its trials will run as training jobs carrying `study_id` and `trial_number`."""
    name: str
    framework: Literal["lightgbm", "pytorch"]
    task: Literal["binary_classification", "multiclass_classification", "regression"]
    dataset: dict[str, Any]
    objective: dict[str, Any]
    search_space: dict[str, Any]
    fixed_params: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int
    max_parallel: int
    timeout_s: int | None
    priority: Literal["low", "medium", "high", "critical"]
    tags: list[str]


class TrialAsked(_Payload):
    """The sampler proposed trial `number` (recorded before its job `job_id` is submitted)."""
    number: int
    params: dict[str, Any]
    job_id: str


class TrialStarted(_Payload):
    number: int


class TrialPruneRequested(_Payload):
    """The pruner stopped trial `number` at `step` (its job is cancelled; the trial ends `pruned`)."""
    number: int
    step: int
    value: float | None


class TrialFinished(_Payload):
    number: int
    state: Literal["completed", "pruned", "failed"]
    value: float | None
    pruned_at_step: int | None
    error: str | None


class BestTrialImproved(_Payload):
    number: int
    value: float
    params: dict[str, Any]
    job_id: str


class StudyCancelRequested(_Payload):
    reason: str
    running: list[int]


class StudyCancelled(_Payload):
    reason: str
    unfinished: list[int]


class StudyCompleted(_Payload):
    reason: str


class StudyFailed(_Payload):
    reason: str


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid")
    event_id: str
    aggregate: Literal["training_job", "study"]
    aggregate_id: str
    aggregate_version: int
    occurred_at: datetime
    type: str
    actor: str
    correlation_id: str | None
    causation_id: str | None
    trace_id: str | None
    payload: P


TRAINING_JOB_EVENTS: dict[str, type[BaseModel]] = {
    "submitted": Submitted, "started": Started, "progress_reported": ProgressReported, "completed": Completed,
    "failed": Failed, "cancel_requested": CancelRequested, "cancelled": Cancelled, "requeued": Requeued,
    "lease_lost": LeaseLost,
}
STUDY_EVENTS: dict[str, type[BaseModel]] = {
    "created": StudyCreated, "trial_asked": TrialAsked, "trial_started": TrialStarted,
    "trial_prune_requested": TrialPruneRequested, "trial_finished": TrialFinished,
    "best_trial_improved": BestTrialImproved, "cancel_requested": StudyCancelRequested, "cancelled": StudyCancelled,
    "completed": StudyCompleted, "failed": StudyFailed,
}
EVENTS: dict[str, dict[str, type[BaseModel]]] = {"training_job": TRAINING_JOB_EVENTS, "study": STUDY_EVENTS}


def specification() -> AsyncAPI:
    broker = NatsBroker("nats://127.0.0.1:4222")
    for aggregate, events in EVENTS.items():
        for name, model in events.items():
            broker.publisher(f"trainyard.v1.{aggregate}.{name}", title=f"{aggregate}.{name}",
                             description=f"{aggregate.replace('_', ' ')} {name.replace('_', ' ')} (stream "
                                         "TRAINYARD_EVENTS, Nats-Msg-Id = event_id)",
                             schema=Envelope[model])  # type: ignore[valid-type]
    broker.publisher("trainyard.v1.telemetry.metrics", title="telemetry.metrics",
                     description="Metric points from runners (stream TRAINYARD_TELEMETRY, Nats-Msg-Id = batch_id)",
                     schema=MetricBatch)
    broker.publisher("trainyard.work.{priority}.{kind}.{aggregate_id}", title="work item",
                     description="Work for the runners (stream TRAINYARD_WORK, work-queue retention, Nats-Msg-Id = "
                                 "work:<event_id>); the claim, not the delivery, decides who runs it", schema=WorkItem)
    return AsyncAPI(broker, title="Trainyard events", version="1.0.0",
                    description="Public NATS JetStream subjects of Trainyard. See docs/events.md.")


def document() -> str:
    return json.dumps(specification().to_specification().to_jsonable(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(document(), end="")


if __name__ == "__main__":
    main()
