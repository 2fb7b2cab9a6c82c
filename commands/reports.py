"""Runner reports → commands. The transport (NATS request/reply on `trainyard.rpc.runner.report`, sharded by job)
is infra/report_server.py; this is what a report means.

A runner retries a report until it gets a `ReportReply`; the aggregate decides what is legal and a repeat of an
applied report is a no-op. Reports for different jobs are handled concurrently, reports for one job in order
(one single-thread executor per shard of job ids). A report is answered as soon as the aggregate has decided
and saved; the live-lease bookkeeping that the answer does not depend on (`hold` after a claim, `drop` after an
attempt's end: infra/leases.py, a cache of what the aggregate says, repaired by the reconciler) follows on the
same shard, so the job's next report still finds it done. Poison policy: a malformed report is answered `invalid`
and dead-lettered; a report whose handling fails unexpectedly is answered `error` (the runner retries a bounded
number of times) and counted in the stage's health; neither holds up any other report.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol
from uuid import UUID

from pydantic import ValidationError

from commands.context import CommandContext
from infra.leases import LeaseStore, milestone_of
from commands.training import JobNotFoundError, TrainingApplication
from domain.contract import ReportReply, RunnerReport, lease_id_of, printable
from domain.resources import describe, shortfall
from domain.work import JobError, JobFinishedError, LeasedWork, LeaseHeldError, StaleLeaseError
from infra.health import Stage

log = logging.getLogger("trainyard.reports")


class Studies(Protocol):
    """What the report handler tells the study driver (commands/study_driver.py), on the handler's threads."""

    def should_prune(self, job_id: UUID, step: int, value: float) -> bool:
        """Whether the job (a study's trial) should stop now; a yes has already requested its cancel."""

    def job_moved(self, study_id: UUID, causation_id: str) -> None:
        """A trial's job just ended (its event is saved): move the study now rather than when the event comes back
        through the relay and JetStream (it still does, and that sync is a no-op). A start is left to its event: it
        asks nothing new, and a sync then would compete with the claim's answer."""


class ReportHandler:
    def __init__(self, app: TrainingApplication, leases: LeaseStore, stage: Stage | None = None,
                 studies: Studies | None = None, may_start: Callable[[str], bool] | None = None) -> None:
        """`may_start(project)`: whether a queued job of that project may start now (its running-jobs quota)."""
        self.app, self.leases, self.stage, self.studies = app, leases, stage or Stage("reports"), studies
        self.may_start = may_start

    def handle(self, data: bytes, answer: Callable[[ReportReply], None] | None = None) -> ReportReply:
        """Decide one report; never raises. With `answer`, the reply goes to it before the lease bookkeeping."""
        later: list[Callable[[], None]] = []
        reply = self._decide(data, later)
        if answer is not None:
            answer(reply)
        for step in later:
            try:
                step()
            except Exception as e:  # a cache: a lost hold is re-made by the next beat, a lost drop by the reconciler
                log.exception("lease bookkeeping after a report failed")
                self.stage.failed(e)  # shown in /readyz like any failure of this stage
        return reply

    def _decide(self, data: bytes, later: list[Callable[[], None]]) -> ReportReply:
        try:
            report = RunnerReport.model_validate_json(data)
        except ValidationError as e:
            return ReportReply(ok=False, code="invalid", error=printable(e, 1000))
        try:
            reply = self._apply(report, later)
        except JobNotFoundError:
            reply = ReportReply(ok=False, code="not_found", error=f"no job {report.job_id}")
        except JobError as e:
            reply = self._refused(report, e)
        except ValueError as e:
            reply = ReportReply(ok=False, code="invalid", error=printable(e, 1000))
        except Exception as e:  # the store is away, or a bug: the runner retries; the stage shows it
            log.exception("report %s for %s not applied", report.type, report.job_id)
            self.stage.failed(e)
            return ReportReply(ok=False, code="error", error=printable(f"{type(e).__name__}: {e}", 500))
        self.stage.progressed()
        return reply

    def _apply(self, r: RunnerReport, later: list[Callable[[], None]]) -> ReportReply:
        lease_id = lease_id_of(r.lease)
        ctx = _context(r)
        if r.type == "heartbeat":
            return self._beat(r, lease_id, ctx)
        if r.type == "intermediate":
            reply = self._beat(r, lease_id, ctx)
            if (reply.ok and not reply.cancel_requested and self.studies is not None and r.value is not None
                    and r.current_step is not None and self.studies.should_prune(r.job_id, r.current_step, r.value)):
                self.leases.flag_cancel(r.job_id)
                reply.cancel_requested = True
            return reply
        if r.type == "claim":
            if self.may_start is not None or r.capacity is not None:
                queued = self.app.get_job(r.job_id)
                if queued.status == "queued" and (unfit := _unfit(queued, r)) is not None:  # nothing recorded
                    return ReportReply(ok=False, code="unfit", status=queued.status, error=unfit)
                project = getattr(queued, "project", "default")
                if (queued.status == "queued" and self.may_start is not None
                        and not self.may_start(project)):  # it stays queued: nothing recorded
                    return ReportReply(ok=False, code="wait", status=queued.status,
                                       error=f"project {project} is at its running-jobs quota")
            job = self.app.claim(r.job_id, lease_id, r.runner_id, ctx, r.resumed_from_step)
            later.append(lambda: self.leases.hold(job.id, lease_id, r.runner_id, job.attempt, job.cancel_requested))
            return _reply(job, job=_work_for(self.app, job))
        if r.type == "check":  # the aggregate's word (after a cancel event on the bus); also renews the lease
            job = self.app.get_job(r.job_id)
            job.check_lease(lease_id)
            self.leases.beat(r.job_id, lease_id, r.current_step, r.total_steps)
            if job.cancel_requested:
                self.leases.flag_cancel(job.id)
            return _reply(job)
        if r.type == "completed":
            job = self.app.complete(r.job_id, lease_id, r.final_metrics, r.artifact or {}, ctx, r.total_steps,
                                    [a.model_dump() for a in r.artifacts or ()])
        elif r.type == "failed":
            job = self.app.fail(r.job_id, lease_id, printable(r.error or "unknown error"), ctx)
        elif r.type == "cancelled":
            job = self.app.confirm_cancelled(r.job_id, lease_id, ctx)
        else:  # release
            job = self.app.hand_back(r.job_id, lease_id, printable(
                f"handed back by runner {r.runner_id} as it stopped (no attempt spent; the next run resumes from its "
                "latest checkpoint, if any)", 300), ctx)
        later.append(lambda: self.leases.drop(job.id, lease_id))
        if r.type != "release":
            self._moved(job, r)
        return _reply(job)

    def _moved(self, job: LeasedWork, r: RunnerReport) -> None:
        study_id = getattr(job, "study_id", None)
        if study_id is not None and self.studies is not None:
            self.studies.job_moved(study_id, f"report:{r.report_id}")

    def _beat(self, r: RunnerReport, lease_id: str, ctx: CommandContext) -> ReportReply:
        beat = self.leases.beat(r.job_id, lease_id, r.current_step, r.total_steps)
        if beat is None:  # not (or no longer) this lease's job: the aggregate says why
            job = self.app.get_job(r.job_id)
            job.check_lease(lease_id)  # raises for a stale lease or a finished job
            self.leases.hold(job.id, lease_id, r.runner_id, job.attempt, job.cancel_requested)  # row was lost
            return _reply(job)
        reached = milestone_of(r.current_step, r.total_steps)
        if reached > beat.milestone and r.current_step is not None and r.total_steps is not None:
            self.app.record_progress(r.job_id, lease_id, r.current_step, r.total_steps, ctx)
            self.leases.set_milestone(r.job_id, lease_id, reached)
        return ReportReply(ok=True, status="running", cancel_requested=beat.cancel_requested)

    def _refused(self, r: RunnerReport, e: JobError) -> ReportReply:
        job = self.app.get_job(r.job_id)
        code = ("finished" if isinstance(e, JobFinishedError) else "lease_held" if isinstance(e, LeaseHeldError)
                else "stale_lease" if isinstance(e, StaleLeaseError) else "refused")
        return ReportReply(ok=False, code=code, error=printable(e, 500), status=job.status, attempt=job.attempt,
                           cancel_requested=job.cancel_requested)


def _unfit(job: LeasedWork, r: RunnerReport) -> str | None:
    """Why the claiming runner is too small for `job` (its resources against the claim's capacity); None: it fits
    (or the runner said nothing of its capacity)."""
    needs = getattr(job, "resources", None)
    if r.capacity is None or not needs:
        return None
    has = r.capacity.model_dump()
    short = shortfall(needs, has)
    if short is None:
        return None
    return f"needs {short} {needs.get(short)}; runner {r.runner_id} has {has.get(short)} ({describe(has)})"


def _context(r: RunnerReport) -> CommandContext:
    return CommandContext(actor=f"runner:{r.runner_id}"[:200], correlation_id=r.correlation_id,
                          causation_id=r.report_id or None, trace_id=r.trace_id)


def _reply(agg: LeasedWork, **extra: Any) -> ReportReply:
    return ReportReply(ok=True, status=agg.status, attempt=agg.attempt, cancel_requested=agg.cancel_requested, **extra)


def _work_for(app: TrainingApplication, job: LeasedWork) -> dict[str, Any]:
    """The claim's answer: what to run, and the submit's correlation and trace ids for the runner's reports."""
    meta = app.origin(job.id)
    return {"kind": job.work_kind, "attempt": job.attempt, "spec": job.spec(),
            "correlation_id": meta.get("correlation_id"), "trace_id": meta.get("trace_id")}
