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


class Failed(_Payload):
    attempt: int
    error: str


class CancelRequested(_Payload):
    attempt: int
    runner_id: str | None


class Cancelled(_Payload):
    attempt: int
    reason: str


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid")
    event_id: str
    aggregate: Literal["training_job"]
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


def specification() -> AsyncAPI:
    broker = NatsBroker("nats://127.0.0.1:4222")
    for name, model in TRAINING_JOB_EVENTS.items():
        broker.publisher(f"trainyard.v1.training_job.{name}", title=f"training_job.{name}",
                         description=f"TrainingJob {name.replace('_', ' ')} (stream TRAINYARD_EVENTS, "
                                     "Nats-Msg-Id = event_id)", schema=Envelope[model])  # type: ignore[valid-type]
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
