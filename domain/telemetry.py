"""Telemetry messages: high-rate facts that do not go through aggregates (design decision 2).

Runners publish `MetricBatch`es on `trainyard.v1.telemetry.metrics` with `Nats-Msg-Id` = batch_id;
the ClickHouse projector stores them idempotently. Part of the public contract (docs/events.md).
A batch is columnar, one `SeriesChunk` per metric name: validating and storing a column of numbers costs
a fraction of one JSON object per point (bench/RESULTS.md).
"""
from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

MetricName = Annotated[str, Field(min_length=1, max_length=200)]


class SeriesChunk(BaseModel):
    """Points of one metric: `steps[i]`, `values[i]` and `ts_ms[i]` (Unix epoch milliseconds, UTC) go together."""

    steps: list[Annotated[int, Field(ge=0)]]
    values: list[float]
    ts_ms: list[Annotated[int, Field(ge=0)]]

    @model_validator(mode="after")
    def _same_lengths(self) -> SeriesChunk:
        if not len(self.steps) == len(self.values) == len(self.ts_ms):
            raise ValueError("steps, values and ts_ms must have the same length")
        return self


class MetricBatch(BaseModel):
    batch_id: str = Field(min_length=1, max_length=100)
    job_id: UUID
    attempt: int = Field(ge=1)
    runner_id: str
    series: dict[MetricName, SeriesChunk]

    @property
    def size(self) -> int:
        return sum(len(c.steps) for c in self.series.values())
