"""Runner reports → commands on the TrainingJob aggregate, over NATS request/reply.

A runner sends a `RunnerReport` to `trainyard.rpc.runner.report` and retries until it gets a
`ReportReply`; the aggregate decides what is legal, and a repeat of an applied report is a no-op.
A malformed report is answered with an error and copied to the dead-letter subject.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal
from uuid import UUID

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, Field, ValidationError

from commands.training import JobNotFoundError, TrainingApplication
from domain.training_job import JobError, JobFinishedError, StaleAttemptError, TrainingJob
from infra.messaging import WORK_STREAM, MAX_DELIVERIES_ADVISORY, REPORT_QUEUE, REPORT_SUBJECT, dlq_subject

log = logging.getLogger("trainyard.reports")


class RunnerReport(BaseModel):
    type: Literal["started", "progress", "completed", "failed", "cancelled"]
    job_id: UUID
    attempt: int = Field(ge=1)
    runner_id: str = Field(min_length=1)
    current_step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=1)
    final_metrics: dict[str, float] = Field(default_factory=dict)
    artifact: dict[str, Any] | None = None
    error: str | None = None


class ReportReply(BaseModel):
    ok: bool
    status: str | None = None
    attempt: int | None = None
    cancel_requested: bool = False
    error: str | None = None
    code: str | None = None  # finished | stale_attempt | not_running | not_found | invalid


def apply_report(app: TrainingApplication, r: RunnerReport) -> TrainingJob:
    if r.type == "started":
        return app.start_attempt(r.job_id, r.attempt, r.runner_id)
    if r.type == "progress":
        return app.report_progress(r.job_id, r.attempt, r.current_step or 0, r.total_steps or 1)
    if r.type == "completed":
        return app.complete(r.job_id, r.attempt, r.final_metrics, r.artifact or {})
    if r.type == "failed":
        return app.fail(r.job_id, r.attempt, r.error or "unknown error")
    return app.confirm_cancelled(r.job_id, r.attempt)


def handle(app: TrainingApplication, data: bytes) -> ReportReply:
    """Decide one report; never raises for bad input or illegal transitions."""
    try:
        report = RunnerReport.model_validate_json(data)
    except ValidationError as e:
        return ReportReply(ok=False, code="invalid", error=str(e))
    try:
        job = apply_report(app, report)
    except JobNotFoundError:
        return ReportReply(ok=False, code="not_found", error=f"no job {report.job_id}")
    except JobError as e:
        job = app.get_job(report.job_id)
        code = "finished" if isinstance(e, JobFinishedError) else (
            "stale_attempt" if isinstance(e, StaleAttemptError) else "not_running")
        return ReportReply(ok=False, code=code, error=str(e), status=job.status, attempt=job.attempt,
                           cancel_requested=job.cancel_requested)
    except ValueError as e:
        return ReportReply(ok=False, code="invalid", error=str(e))
    return ReportReply(ok=True, status=job.status, attempt=job.attempt, cancel_requested=job.cancel_requested)


async def serve_reports(nc: Client, app: TrainingApplication) -> Any:
    """Subscribe in the command handlers' queue group; returns the subscription."""

    async def on_report(msg: Msg) -> None:
        try:
            reply = await asyncio.to_thread(handle, app, msg.data)
        except Exception as e:  # the store is away: no reply, the runner retries
            log.exception("report not applied: %s", e)
            return
        if reply.code == "invalid":
            log.warning("malformed runner report dead-lettered: %s", reply.error)
            await nc.publish(dlq_subject(REPORT_SUBJECT), msg.data, headers={"Trainyard-Error": " ".join((reply.error or "").split())[:500]})
        if msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    return await nc.subscribe(REPORT_SUBJECT, queue=REPORT_QUEUE, cb=on_report)


def encode(report: RunnerReport) -> bytes:
    return report.model_dump_json().encode()


def decode_reply(data: bytes) -> ReportReply:
    return ReportReply.model_validate(json.loads(data))


async def serve_dead_work(nc: Client, js: JetStreamContext, app: TrainingApplication) -> Any:
    """Work items past their delivery limit (every runner that took them died): dead-letter, fail the job."""

    async def on_advisory(msg: Msg) -> None:
        try:
            await give_up_on(js, app, json.loads(msg.data)["stream_seq"])
        except Exception:
            log.exception("could not dead-letter an exhausted work item")

    return await nc.subscribe(MAX_DELIVERIES_ADVISORY, cb=on_advisory)


async def give_up_on(js: JetStreamContext, app: TrainingApplication, stream_seq: int) -> UUID:
    raw = await js.get_msg(WORK_STREAM, stream_seq)
    job_id = UUID(json.loads(raw.data)["aggregate_id"])
    await js.publish(dlq_subject(raw.subject), raw.data, headers={"Nats-Msg-Id": f"dead-work:{stream_seq}"})
    await js.delete_msg(WORK_STREAM, stream_seq)  # out of the work queue for good
    await asyncio.to_thread(app.give_up, job_id, "no runner finished it: the work item ran out of deliveries")
    log.warning("job %s failed: work item %d dead-lettered after max deliveries", job_id, stream_seq)
    return job_id
