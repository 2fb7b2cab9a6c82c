"""The study driver: owns Optuna for every running study; asks for trials, submits them as jobs, tells outcomes.

It keeps no Optuna database. For each running study it builds a `StudyOptimizer` from the `Study` aggregate (the
trials it recorded, and their intermediate values from the metric store), then keeps the study moving with one
idempotent step, `sync(study_id)`:
1. each unfinished trial is compared with its training job (the job aggregate: command side): a job that
   started marks the trial running; a job that ended records the trial's outcome (completed with the objective's
   final metric; a cancelled job whose trial was pruned → pruned; anything else → failed) and tells Optuna;
   a recorded trial whose job does not exist (recorded by an older version that saved the two apart) has its
   job submitted;
2. a cancelling study cancels its trials' jobs; a study past its `timeout_s` asks for nothing more and
   completes when its last trial ends;
3. while fewer than `max_parallel` trials are unfinished and fewer than `n_trials` were asked, it asks Optuna and
   records the ask on the Study together with the trial's job, in one transaction (`_Draft`).
`sync` runs on every study or training-job event of that study (`handle`: the entry point feeds it from a durable
JetStream consumer on the events stream, acked after the sync; a message that fails 5 times is dead-lettered) and
every `refresh_s` for every running study (`refresh`), so a lost event delays a step, never loses it. In the serve
process the report handler also nudges the driver (`job_moved`) the moment a trial's job ends, so the next trial is
asked without waiting for the event's trip through the relay and JetStream.

Pruning: a runner training a trial with a pruner reports the objective's step metric after each step (a code
trial: each value its script reports with `run.report`, also kept as its `objective` series) as `intermediate`
reports; the report handler asks `should_prune`; a yes is recorded on the Study
(`TrialPruneRequested`), the job's cancel is requested, and the report's reply tells the runner to stop.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable
from datetime import datetime, timezone
from typing import Any, Protocol
from uuid import UUID

from commands.context import CommandContext
from commands.studies import StudyCommands, StudyNotFoundError, trial_job_id
from commands.study_optimizer import StudyOptimizer, TrialRecord
from commands.training import JobNotFoundError, TrainingApplication
from domain.contract import printable
from domain.search_space import CODE_OBJECTIVE_SERIES, step_metric_for
from domain.study import Study, StudyError, Trial
from domain.training_job import JobError
from domain.vocabulary import JobStatus, StudyStatus, TrialState
from infra.health import Stage

log = logging.getLogger("trainyard.studies")
DRIVER = CommandContext(actor="system:study-driver")
STUDY_TRIGGERS = frozenset({"study.created", "study.cancel_requested", "study.completed", "study.cancelled",
                            "study.failed"})
JOB_TRIGGERS = frozenset({"training_job.submitted", "training_job.started", "training_job.completed",
                          "training_job.failed", "training_job.cancelled"})


class RunningStudies(Protocol):
    """The studies read model, as the driver reads it (projections/studies.py StudyQueries)."""

    def running_ids(self) -> list[UUID]:
        """The ids of the studies that are running or cancelling."""
        ...


class MalformedEvent(ValueError):
    """An event on the bus that no sync can make sense of: the entry point's consumer dead-letters it at once."""


class StudyDriver:
    def __init__(self, app: TrainingApplication, reads: RunningStudies, stage: Stage | None = None,
                 metrics: Any = None, refresh_s: float = 2.0) -> None:
        self.app, self.studies, self.reads, self.metrics = app, StudyCommands(app), reads, metrics
        self.stage = stage or Stage("study-driver", loops=True)
        self.refresh_s, self._refreshed = refresh_s, 0.0
        self._optimizers: dict[UUID, StudyOptimizer] = {}
        self._job_trials: dict[UUID, tuple[UUID, int]] = {}  # job id -> (study id, trial number)
        self._seen: dict[UUID, int] = {}  # job id -> the job's version this driver has acted on
        self._lock = threading.RLock()
        self._moves: queue.SimpleQueue[tuple[UUID, str] | None] = queue.SimpleQueue()
        self._mover: threading.Thread | None = None  # follows the nudges while `run` runs

    # ---- one study -------------------------------------------------------------------------------
    def sync(self, study_id: UUID, ctx: CommandContext = DRIVER) -> Study | None:
        """Bring one study up to date (see the module docstring). Idempotent; safe to call any time. Everything
        it decides about the study (trials started and finished, trials asked with their jobs, the end) is saved in
        one transaction at the end (`_Draft`)."""
        with self._lock:
            try:
                study = self.studies.get(study_id, copy=False)  # read only: changes go to the draft's copy
            except StudyNotFoundError:
                return None
            if study.is_finished:
                self._forget(study)
                return study
            opt = self._optimizer(study)
            draft = _Draft(study)
            for number in study.unfinished:
                self._follow(draft, opt, number, ctx)
            if draft.study.status == StudyStatus.CANCELLING:
                self._cancel_jobs(draft.study, ctx)
            elif draft.study.status == StudyStatus.RUNNING:
                opt = self._fill(draft, opt)
            try:
                study = draft.save(self.app, ctx)
            except Exception:  # Optuna was told or asked what is not recorded: rebuild it from the record next time
                self._optimizers.pop(study_id, None)
                raise
            self._seen.update(draft.seen)  # only once recorded: else the job's event must still sync
            if study.is_finished:
                self._forget(study)
            return study

    def _follow(self, draft: _Draft, opt: StudyOptimizer, number: int, ctx: CommandContext) -> None:
        trial = draft.study.trial(number)
        job_id = UUID(str(trial.job_id))
        self._job_trials[job_id] = (draft.study.id, number)
        try:
            job = self.app.get_job(job_id, copy=False)
        except JobNotFoundError:  # recorded without its job by an older version that saved the two apart
            self.studies.submit_trial(draft.study, number, ctx)
            return
        if job.status == JobStatus.RUNNING and trial.state == TrialState.QUEUED:
            draft.edit().trial_started(number)
        if job.is_finished:
            state, value, error = _outcome(job, trial, draft.study.objective["metric"], draft.study.status)
            draft.edit().finish_trial(number, state, value, error)
            opt.tell(number, state, value)
        draft.seen[job_id] = job.version  # acted on: its events up to here need no other sync

    def _fill(self, draft: _Draft, opt: StudyOptimizer) -> StudyOptimizer:
        """Ask while the study can (on the draft: the trials this sync finished count); returns the optimizer, a
        rebuilt one if it was out of step with the record."""
        study_id, timeout_s = draft.study.id, draft.study.timeout_s
        timed_out = timeout_s is not None and _age_s(draft.study) > timeout_s
        while draft.study.can_ask and not timed_out and not opt.exhausted:
            number, params = opt.ask()
            if number != draft.study.next_number:  # out of step with the record: rebuild from it
                log.warning("study %s: optimizer at %d, study at %d; rebuilding", study_id, number,
                            draft.study.next_number)
                self._optimizers.pop(study_id, None)
                opt = self._optimizer(draft.study)
                continue
            job_id = trial_job_id(study_id, number, project=draft.study.project)
            draft.edit().ask_trial(number, params, job_id)
            draft.jobs.append(self.studies.trial_job(draft.study, number))  # saved with the ask
            self._job_trials[job_id] = (study_id, number)
            draft.seen.setdefault(job_id, 1)  # its `submitted` event moves nothing
        if not draft.study.unfinished and (timed_out or opt.exhausted) and draft.study.status == StudyStatus.RUNNING:
            reason = f"timeout_s of {timeout_s} s reached" if timed_out else "the search space is exhausted"
            draft.edit().complete(f"{reason} after {draft.study.next_number} trials")
        return opt

    def _cancel_jobs(self, study: Study, ctx: CommandContext) -> None:
        for number in study.unfinished:
            try:
                self.app.request_cancel(UUID(str(study.trial(number).job_id)), project=study.project, ctx=ctx)
            except (JobError, JobNotFoundError):
                pass  # finished meanwhile (its outcome is recorded on the next sync) or never submitted

    def _optimizer(self, study: Study) -> StudyOptimizer:
        opt = self._optimizers.get(study.id)
        if opt is None:
            opt = StudyOptimizer(study.id, study.objective["direction"], study.search_space, study.sampler,
                                 study.pruner)
            opt.restore([self._record(study, n, t) for n, t in sorted(study.trials.items())])
            self._optimizers[study.id] = opt
        return opt

    def _record(self, study: Study, number: int, trial: Trial) -> TrialRecord:
        intermediate: dict[int, float] = {}
        metric = CODE_OBJECTIVE_SERIES if study.code else step_metric_for(study.task, study.objective["metric"])
        if self.metrics is not None and metric and study.pruner.get("type", "none") != "none":
            try:
                job = str(trial.job_id)
                intermediate = {s: v for s, v, _ in self.metrics.series(job, metric, max_points=100_000,
                                                                        attempt=self.metrics.attempt_of(job, metric))
                                if math.isfinite(v)}
            except Exception as e:  # the metric store is away: prune decisions start from no history
                log.warning("study %s: no intermediate values for trial %d (%s)", study.id, number, printable(e, 200))
        return TrialRecord(number=number, params=dict(trial.params), state=trial.state, value=trial.value,
                           intermediate=intermediate)

    def _forget(self, study: Study) -> None:
        self._optimizers.pop(study.id, None)
        for trial in study.trials.values():
            self._job_trials.pop(UUID(str(trial.job_id)), None)
            self._seen.pop(UUID(str(trial.job_id)), None)

    # ---- pruning (called by the report handler, on its threads) ------------------------------------
    def should_prune(self, job_id: UUID, step: int, value: float) -> bool:
        """Whether a trial's job should stop now, given its objective's value at `step`. A yes is recorded on the
        Study and the job's cancel is requested, so the runner's next reply says stop."""
        with self._lock:
            ref = self._job_trials.get(job_id)
            if ref is None:
                try:
                    job = self.app.get_job(job_id, copy=False)
                except JobNotFoundError:
                    return False
                if job.study_id is None or self.sync(job.study_id) is None:
                    return False
                ref = self._job_trials.get(job_id)
            if ref is None or ref[0] not in self._optimizers or not math.isfinite(value):
                return False
            study_id, number = ref
            if not self._optimizers[study_id].report(number, step, value):
                return False
            ctx = DRIVER.caused_by(f"prune:{job_id}:{step}")
            try:
                study = self.studies.prune_trial(study_id, number, step, value, ctx)
                self.app.request_cancel(job_id, project=study.project, ctx=ctx)
            except (StudyError, JobError):
                return False
            return True

    def job_moved(self, study_id: UUID, causation_id: str) -> None:
        """The report handler (on its threads) saw a trial's job end: sync its study now, on the driver's
        nudge thread, ahead of the job's event on JetStream (which comes anyway; its sync is then a no-op). Never
        raises: a lost nudge costs only the time the event takes."""
        if self._mover is not None:
            self._moves.put((study_id, causation_id))

    def _follow_moves(self) -> None:
        """The nudges' own thread: a nudge is synced the moment it is put (no hop through the event loop)."""
        while (move := self._moves.get()) is not None:
            study_id, causation = move
            try:
                self.sync(study_id, DRIVER.caused_by(causation[:64]))
            except Exception as e:  # the job's event on JetStream syncs it again, with the poison policy
                log.warning("study driver: sync of %s after %s failed: %s", study_id, causation, printable(e, 200))

    # ---- the events (the entry point wires the JetStream consumer: infra/consumer.py) ---------------
    async def run(self, events: Awaitable[None]) -> None:
        """Follow the report handler's nudges on a thread of their own while `events` (the loop that feeds
        `handle` and `refresh`) runs."""
        mover = self._mover = threading.Thread(target=self._follow_moves, name="study-driver-moves", daemon=True)
        mover.start()
        try:
            await events
        finally:
            self._mover = None
            self._moves.put(None)  # after the nudges already put
            await asyncio.to_thread(mover.join, 30)

    async def handle(self, event: dict[str, Any]) -> None:
        """One event of the events stream: sync the study it moves (`study_of`). MalformedEvent for one that does
        not make sense (anyone can publish on the bus); any other error is worth another try."""
        try:
            study_id = self.study_of(event)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise MalformedEvent(f"{type(e).__name__}: {e}") from e
        if study_id is not None:
            await asyncio.to_thread(self.sync, study_id, DRIVER.caused_by(str(event.get("event_id"))[:64]))

    async def refresh(self) -> None:
        """Sync every running study, once every `refresh_s` (a lost event delays a step, never loses it)."""
        if time.monotonic() - self._refreshed <= self.refresh_s:
            return
        self._refreshed = time.monotonic()
        try:
            for study_id in await asyncio.to_thread(self.running_studies):
                await asyncio.to_thread(self.sync, study_id)
            self.stage.progressed()
        except Exception as e:
            log.exception("study driver: refresh failed")
            self.stage.failed(e)

    def running_studies(self) -> list[UUID]:
        """The studies the read model shows going, and those this driver holds (the read model may lag)."""
        return list(dict.fromkeys([*self.reads.running_ids(), *self._optimizers]))

    def study_of(self, event: dict[str, Any]) -> UUID | None:
        """The study an event moves: a study's own event from outside the driver (created, cancel), or a trial's
        job starting or ending. The driver's own study events, a job's progress milestones and a job event the
        driver has already acted on (the report handler's nudge came first) move nothing."""
        kind = str(event.get("type", ""))
        if event.get("aggregate") == "study" and kind in STUDY_TRIGGERS:
            return UUID(event["aggregate_id"])
        if event.get("aggregate") == "training_job" and kind in JOB_TRIGGERS:
            job_id = UUID(event["aggregate_id"])
            with self._lock:
                ref, seen = self._job_trials.get(job_id), self._seen.get(job_id, 0)
            version = event.get("aggregate_version")
            if ref and isinstance(version, int) and version <= seen:
                return None
            if ref:
                return ref[0]
            study_id = (event.get("payload") or {}).get("study_id")
            return UUID(study_id) if study_id else None
        return None


class _Draft:
    """One sync's decisions about a study: applied to one copy of it (made at the first decision; none if nothing
    changes) and saved once, with the jobs of the trials it asked, in one transaction. So an ask and its job are
    recorded together or not at all, and a trial's end and the next ask cost one save."""

    def __init__(self, study: Study) -> None:
        self.study, self._copied = study, False
        self.jobs: list[Any] = []
        self.seen: dict[UUID, int] = {}

    def edit(self) -> Study:
        if not self._copied:
            self.study, self._copied = copy.deepcopy(self.study), True
        return self.study

    def save(self, app: TrainingApplication, ctx: CommandContext) -> Study:
        if self._copied and (self.study.pending_events or self.jobs):
            app.save_with(ctx, self.study, *self.jobs)
        return self.study


def _outcome(job: Any, trial: Trial, metric: str, study_status: str) -> tuple[str, float | None, str | None]:
    """(trial state, objective value, error) of a finished trial job."""
    if job.status == JobStatus.COMPLETED:
        value = (job.final_metrics or {}).get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return TrialState.COMPLETED, float(value), None
        return TrialState.FAILED, None, f"the job completed without a finite {metric!r} final metric"
    if job.status == JobStatus.CANCELLED:
        if trial.prune_requested_at_step is not None:
            return TrialState.PRUNED, None, None
        cancelled = "cancelled with the study" if study_status == StudyStatus.CANCELLING else "its job was cancelled"
        return TrialState.FAILED, None, cancelled
    return TrialState.FAILED, None, printable(job.error or "the job failed", 500)


def _age_s(study: Study) -> float:
    return (datetime.now(timezone.utc) - study.created_on).total_seconds()
