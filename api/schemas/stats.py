"""The queue and its capacity (GET /api/v1/stats): what each figure means is in its description."""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

UTILISATION_WINDOW_S = 3600
UTILISATION = ("busy runner-seconds over the runner-seconds the runners were there, in the last hour (0 to 1; null "
               "when no runner was there). A runner runs one work item at a time, so it is one slot. Busy: the "
               "latest attempt of each training job and model export of every project, from its start to its end "
               "(now, while it runs); a requeued job's earlier attempts are not counted. There: from a runner's "
               "first hello to one hello interval after its last")


class PriorityCounts(BaseModel):
    priority: str
    counts: dict[str, int] = Field(description="jobs of this priority per status (every status, zeros included)")
    total: int
    oldest_queued_at: datetime | None = Field(description="when the longest-waiting queued job of this priority was "
                                                          "submitted (null: none queued)")


class JobCounts(BaseModel):
    total: int = Field(description="the project's jobs, study trials included")
    queued: int
    running: int
    by_status: dict[str, int] = Field(description="every status, zeros included")
    by_priority: list[PriorityCounts] = Field(description="most urgent first, the order runners take work in")


class RunnerStats(BaseModel):
    runner_id: str
    cpus: int | None = Field(description="what the runner says it has (null: it ran work in the last hour but no "
                                         "hello of it was recorded then)")
    memory_mb: int | None
    gpus: int | None
    gpu_model: str | None
    accepts_code: bool | None
    first_seen: datetime | None
    seen_at: datetime | None = Field(description="its last hello")
    live: bool = Field(description="heard from within TRAINYARD_RUNNER_SEEN_WINDOW_S (the runners a submit is "
                                   "checked against)")
    running: int = Field(description="work items (training jobs and exports, of any project) running on it now: "
                                     "0 or 1")
    running_jobs: list[UUID] = Field(description="the running ones that are this project's jobs")
    busy_s: float = Field(description="seconds busy in the last hour, any project's work")
    present_s: float = Field(description="seconds it was there in the last hour")
    utilisation: float | None = Field(description="busy_s / present_s (at most 1; null when present_s is 0)")


class Utilisation(BaseModel):
    window_s: int = UTILISATION_WINDOW_S
    since: datetime
    until: datetime
    runners: int = Field(description="runners there at some time in the window")
    busy_s: float = Field(description="busy runner-seconds, every project's work")
    capacity_s: float = Field(description="runner-seconds the runners were there")
    utilisation: float | None = Field(description=UTILISATION)
    project_busy_s: float = Field(description="the part of busy_s that ran this project's jobs and exports")


class TimingStats(BaseModel):
    framework: str
    task: str
    completed: int = Field(description="jobs completed in the window: the durations' sample")
    duration_mean_s: float | None = Field(description="mean of finished_at - started_at (the run that completed)")
    duration_p95_s: float | None = Field(description="95th percentile, linear interpolation (numpy's default)")
    started: int = Field(description="jobs first started in the window: the queue waits' sample")
    queue_wait_mean_s: float | None = Field(description="mean of the first start - the submit")
    queue_wait_p95_s: float | None = Field(description="95th percentile, linear interpolation")


class StatsPublic(BaseModel):
    project: str
    generated_at: datetime
    window_s: int = Field(description="how far back `timings` look")
    jobs: JobCounts
    runners: list[RunnerStats] = Field(description="the runners there in the last hour (shared by the installation; "
                                                   "busy figures count every project's work)")
    utilisation: Utilisation
    timings: list[TimingStats] = Field(description="per framework and task of this project, in the window")
