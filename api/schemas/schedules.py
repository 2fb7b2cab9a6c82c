"""Schedules: a job or study template run on a cron expression in a timezone, and the times it handled."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from api.limits import SafeText
from api.schemas.jobs import JobIn
from api.schemas.retrains import ScheduledRetrainIn
from api.schemas.studies import StudyIn
from domain.identity import NAME_PATTERN
from domain.schedule import CatchUp, Overlap, ScheduleStatus
from domain.schedule_times import MAX_CRON_CHARS

CRON_HELP = ("5 fields (minute hour day-of-month month day-of-week) or 6 (seconds last), as croniter reads them, in "
             "`timezone`: a wall-clock time that DST skips fires at the first time after the gap; an hour that DST "
             "repeats is walked twice")
OVERLAP_HELP = ("while the previous run is still queued or running: `skip` this time (recorded with the reason), "
                "`queue` another run, or `cancel_previous` then run")
CATCH_UP_HELP = ("the times that passed with no scheduler running (older than the grace, 60 s by default): `none` "
                 "records them missed, `latest` runs the newest of them, `all` runs each")


class _Template(BaseModel):
    # Not `| None`: a template given is an object (null is refused); one left out stays None.
    job: JobIn = Field(default=None, description="a training job, exactly as POST /api/v1/training/jobs takes "
                                                 "it; each run is a new job")
    study: StudyIn = Field(default=None, description="a study, exactly as POST /api/v1/studies takes it; each "
                                                     "run is a new study")
    retrain: ScheduledRetrainIn = Field(default=None, description="a deployment's retrain: `deployment` and "
                                               "what POST /api/v1/deployments/{name}/retrain takes; each run is a "
                                               "new retrain of what the deployment serves then")


class ScheduleIn(_Template):
    # The schema says what the validator checks: exactly one template (each is an object, never null).
    model_config = ConfigDict(extra="forbid", use_enum_values=True, json_schema_extra={
        "oneOf": [{"required": [kind]} for kind in ("job", "study", "retrain")]})
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits, '.', '_', '-'; 1 to 63")
    cron: SafeText = Field(min_length=9, max_length=MAX_CRON_CHARS, description=CRON_HELP)
    timezone: SafeText = Field(default="UTC", min_length=1, max_length=64, description="an IANA timezone name")
    overlap: Overlap = Field(default=Overlap.SKIP, description=OVERLAP_HELP)
    catch_up: CatchUp = Field(default=CatchUp.LATEST, description=CATCH_UP_HELP)
    enabled: StrictBool = Field(default=True, description="false: created paused")

    @model_validator(mode="after")
    def _one_template(self) -> ScheduleIn:
        if sum(t is not None for t in (self.job, self.study, self.retrain)) != 1:
            raise ValueError("exactly one of `job`, `study` and `retrain`")
        return self


class SchedulePatch(_Template):
    """Only the fields given change; a new cron or timezone counts from now; `job` / `study` as its kind."""
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    cron: SafeText | None = Field(default=None, min_length=9, max_length=MAX_CRON_CHARS, description=CRON_HELP)
    timezone: SafeText | None = Field(default=None, min_length=1, max_length=64)
    overlap: Overlap | None = Field(default=None, description=OVERLAP_HELP)
    catch_up: CatchUp | None = Field(default=None, description=CATCH_UP_HELP)


class SchedulePublic(BaseModel):
    id: UUID
    name: str
    cron: str
    timezone: str
    kind: str = Field(description="job | study | retrain")
    template: dict[str, Any] = Field(description="what each run submits")
    overlap: Overlap
    catch_up: CatchUp
    enabled: bool
    status: ScheduleStatus
    next_fire_at: datetime | None
    last_run_id: UUID | None
    last_scheduled_for: datetime | None
    fired: int
    skipped: int
    missed: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    items: list[SchedulePublic]
    total: int
    limit: int
    offset: int


class ScheduleRunPublic(BaseModel):
    outcome: str = Field(description="fired | skipped | missed")
    trigger: str = Field(description="cron | catch_up | manual")
    scheduled_for: datetime = Field(description="the scheduled time (a missed range: its first)")
    last_scheduled_for: datetime = Field(description="a missed range's last time (else scheduled_for)")
    count: int = Field(description="how many times this row stands for (a missed range: more than one)")
    run_id: UUID | None = Field(description="the job or study the time ran as")
    run_kind: str | None
    cancelled: UUID | None = Field(description="the previous run this one cancelled (overlap cancel_previous)")
    reason: str
    recorded_at: datetime


class ScheduleRunList(BaseModel):
    items: list[ScheduleRunPublic]
    total: int
    limit: int
    offset: int


class Triggered(BaseModel):
    outcome: str = Field(description="fired | skipped (the overlap policy; see reason)")
    run_id: UUID | None
    scheduled_for: datetime
    reason: str
