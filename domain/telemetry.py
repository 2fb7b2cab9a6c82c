"""Telemetry messages: high-rate facts that do not go through aggregates (design decision 2).

Runners publish `MetricBatch`es on `trainyard.v1.telemetry.metrics` with `Nats-Msg-Id` = batch_id;
the ClickHouse projector stores them idempotently. Part of the public contract (docs/events.md).
"""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field


class MetricSample(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    value: float
    ts: datetime


class MetricBatch(BaseModel):
    batch_id: str = Field(min_length=1, max_length=100)
    job_id: UUID
    attempt: int = Field(ge=1)
    runner_id: str
    points: list[MetricSample]
