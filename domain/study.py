"""The Study aggregate: a hyperparameter search whose trials are ordinary TrainingJobs, guarded.

    running ──ask_trial / trial_started / prune_trial / finish_trial──► running
      │  ├── last of n_trials trials finished, or complete() with none unfinished ──► completed
      │  ├── fail ──────────────────────────────────────────────────────────────────► failed
      │  ├── request_cancel with no trial queued/running ───────────────────────────► cancelled
      │  └── request_cancel with trials queued/running ──► cancelling
      │                                                     ├── last unfinished trial finished ──► cancelled
      │                                                     ├── confirm_cancelled ───────────────► cancelled
      │                                                     └── fail ────────────────────────────► failed
    trial: queued ──trial_started──► running ──finish_trial──► completed | pruned | failed
           (queued may finish directly; prune_trial only marks the driver's request, the outcome comes later)

The driver owns the sampler and issues these commands; this aggregate records what was asked and how each
trial ended. Trial numbers are 0..n-1 without gaps; each trial's outcome is recorded once. Reports arrive at
least once and out of order: a repeat of what was recorded is a no-op, and a late report on a finished trial
or an ended study is recorded (an outcome) or ignored (a start or prune), never refused. An ended study never
changes status again. No I/O here.

A trial's record is a frozen `Trial` that the `_trial_*` mutators replace, and every other attribute a mutator
sets (`best`, `status`, the reasons) is replaced too; what the study was created with never changes. So a copy of a study
(`__deepcopy__`) shares all of it but its own `trials` mapping: the driver copies a study at each decision, the
repository's cache at each load, and a deep copy of every trial's params was most of what a sync of a 50-trial
study cost.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.contract import DEFAULT_PROJECT
from domain.copies import copy_sharing_values
from domain.identity import check_name
from domain.validation import stored
from domain.vocabulary import STUDY_ENDED, TRIAL_UNFINISHED, Direction, StudyStatus, TrialState

TRIAL_OUTCOMES: tuple[TrialState, ...] = tuple(s for s in TrialState if s not in TRIAL_UNFINISHED)


class StudyError(Exception):
    """A command the study's state does not allow; maps to HTTP 409."""


class StudyFinishedError(StudyError):
    """The study already ended (or, for ask_trial, is no longer running)."""


class TrialNumberError(StudyError):
    """An unknown trial, a gap or a repeat of a trial number with other params or job."""


class TrialLimitError(StudyError):
    """A trial beyond the study's n_trials."""


class TrialOutcomeError(StudyError):
    """A different outcome for a trial whose outcome is already recorded."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Trial:
    """What the study recorded of one trial. Replaced (`dataclasses.replace`), never changed, so copies of a study
    share them; `params` is the sampler's JSON object and is never changed in place either."""

    number: int
    params: dict[str, Any]
    job_id: UUID
    state: str  # a TrialState; kept as the event recorded it, so a stored event loads under any later vocabulary
    value: float | None = None
    prune_requested_at_step: int | None = None
    pruned_at_step: int | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        return cls(number=data["number"], params=copy.deepcopy(data["params"]), job_id=UUID(str(data["job_id"])),
                   state=data["state"], value=data.get("value"),
                   prune_requested_at_step=data.get("prune_requested_at_step"),
                   pruned_at_step=data.get("pruned_at_step"), error=data.get("error"))

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "params": copy.deepcopy(self.params), "job_id": str(self.job_id),
                "state": str(self.state), "value": self.value, "prune_requested_at_step": self.prune_requested_at_step,
                "pruned_at_step": self.pruned_at_step, "error": self.error}


class Study(Aggregate):
    class Created(Aggregate.Created):
        """v2 added the study's `project` (a study created before projects belongs to the default project); v3 its
        trials' `code` and `resources` (None for a built-in framework's study); v4 its trials' `validation` (None:
        the default holdout)."""

        class_version = 4
        name: str
        framework: str
        task: str
        dataset: dict[str, Any]
        objective: dict[str, Any]
        search_space: dict[str, Any]
        fixed_params: dict[str, Any]
        sampler: dict[str, Any]
        pruner: dict[str, Any]
        n_trials: int
        max_parallel: int
        timeout_s: int | None
        priority: str
        tags: list[str]
        project: str = DEFAULT_PROJECT
        code: dict[str, Any] | None = None
        resources: dict[str, Any] | None = None
        validation: dict[str, Any] | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("code", None)
            state.setdefault("resources", None)

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            state.setdefault("validation", None)

    @classmethod
    def create(cls, id: UUID, *, project: str, validation: dict[str, Any] | None = None, **fields: Any) -> Study:
        """A new study in `project`: the objective needs a metric and a direction, at least one trial and one in
        parallel; its trials' `validation` is checked (ValidationError naming the field)."""
        objective, n_trials, max_parallel = fields["objective"], fields["n_trials"], fields["max_parallel"]
        if objective.get("direction") not in tuple(Direction) or not objective.get("metric"):
            raise ValueError(f"objective needs a metric and a direction ({', '.join(Direction)}): {objective!r}")
        if n_trials < 1 or max_parallel < 1:
            raise ValueError(f"n_trials ({n_trials}) and max_parallel ({max_parallel}) must be at least 1")
        return cls(id=id, project=check_name(project, "project"), validation=stored(validation), **fields)

    @event(Created)
    def __init__(
        self,
        id: UUID,
        name: str,
        framework: str,
        task: str,
        dataset: dict[str, Any],
        objective: dict[str, Any],
        search_space: dict[str, Any],
        fixed_params: dict[str, Any],
        sampler: dict[str, Any],
        pruner: dict[str, Any],
        n_trials: int,
        max_parallel: int,
        timeout_s: int | None,
        priority: str,
        tags: list[str],
        project: str = DEFAULT_PROJECT,
        code: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        validation: dict[str, Any] | None = None,
    ) -> None:
        # Only assigns: the rules ran in `create`, and a stored event must load under any later rule.
        self.project = project  # its trials' jobs belong to it too
        self.code, self.resources = code, resources  # a code study's: every trial runs this bundle and entrypoint
        self.validation = validation  # how every trial splits its rows (domain/validation.py); None: holdout
        self.name = name
        self.framework = framework
        self.task = task
        self.dataset = dataset
        self.objective = objective
        self.search_space = search_space
        self.fixed_params = fixed_params
        self.sampler = sampler
        self.pruner = pruner
        self.n_trials = n_trials
        self.max_parallel = max_parallel
        self.timeout_s = timeout_s
        self.priority = priority
        self.tags = tags
        self.status = StudyStatus.RUNNING
        self.trials: dict[int, Trial] = {}
        self.best: dict[str, Any] | None = None
        self.cancel_reason: str | None = None
        self.finished_reason: str | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Study:
        return copy_sharing_values(self, memo, own=("trials",))  # the one container mutators change (its records)

    # ---- read-only views ----------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status in STUDY_ENDED

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TrialState, 0)
        for trial in self.trials.values():
            counts[trial.state] += 1
        return counts

    @property
    def unfinished(self) -> list[int]:
        """Numbers of the trials still queued or running, in order."""
        return [n for n, t in sorted(self.trials.items()) if t.state in TRIAL_UNFINISHED]

    @property
    def next_number(self) -> int:
        return len(self.trials)

    @property
    def can_ask(self) -> bool:
        """Whether the driver may ask the sampler for another trial now."""
        return (self.status == StudyStatus.RUNNING and self.next_number < self.n_trials
                and len(self.unfinished) < self.max_parallel)

    def better(self, value: float, than: float) -> bool:
        """Strictly better by the objective's direction."""
        return value > than if self.objective["direction"] == "maximize" else value < than

    def history(self) -> list[tuple[int, float, float]]:
        """(number, value, best so far) of the completed trials, in number order."""
        out: list[tuple[int, float, float]] = []
        best: float | None = None
        for n, t in sorted(self.trials.items()):
            if t.state == TrialState.COMPLETED:
                best = t.value if best is None or self.better(t.value, best) else best
                out.append((n, t.value, best))
        return out

    def trial(self, number: int) -> Trial:
        if number not in self.trials:
            raise TrialNumberError(f"study {self.id} has no trial {number}")
        return self.trials[number]

    # ---- trials ---------------------------------------------------------------------------------
    def ask_trial(self, number: int, params: dict[str, Any], job_id: UUID) -> None:
        """Record the sampler's trial `number` (the next one) run as job `job_id`. A repeat is a no-op."""
        if number in self.trials:
            t = self.trials[number]
            if t.params == params and t.job_id == job_id:
                return
            raise TrialNumberError(f"trial {number} of study {self.id} was asked with other params or job")
        if self.status != StudyStatus.RUNNING:
            raise StudyFinishedError(f"study {self.id} is {self.status}: no new trials")
        if number != self.next_number:
            raise TrialNumberError(f"the next trial of study {self.id} is {self.next_number}, not {number}")
        if number >= self.n_trials:
            raise TrialLimitError(f"study {self.id} runs at most {self.n_trials} trials")
        if any(t.job_id == job_id for t in self.trials.values()):
            raise StudyError(f"job {job_id} already runs another trial of study {self.id}")
        self._trial_asked(number=number, params=copy.deepcopy(params), job_id=job_id)

    @event("TrialAsked")
    def _trial_asked(self, number: int, params: dict[str, Any], job_id: UUID) -> None:
        self.trials[number] = Trial(number=number, params=params, job_id=job_id, state=TrialState.QUEUED)

    def trial_started(self, number: int) -> None:
        """The trial's job started; a repeat or a late report (trial already running or ended) is a no-op."""
        if self.trial(number).state == TrialState.QUEUED:
            self._trial_started(number=number)

    @event("TrialStarted")
    def _trial_started(self, number: int) -> None:
        self.trials[number] = replace(self.trials[number], state=TrialState.RUNNING)

    def prune_trial(self, number: int, step: int, value: float | None) -> None:
        """The driver decided the trial should stop at `step` (its job will end cancelled, then the driver
        finishes it as "pruned"). Once per trial: a repeat, or a prune of an ended trial, is a no-op."""
        t = self.trial(number)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"prune step must be a non-negative int, not {step!r}")
        if t.state in TRIAL_UNFINISHED and t.prune_requested_at_step is None:
            self._trial_prune_requested(number=number, step=step, value=float(value) if _finite(value) else None)

    @event("TrialPruneRequested")
    def _trial_prune_requested(self, number: int, step: int, value: float | None) -> None:
        self.trials[number] = replace(self.trials[number], prune_requested_at_step=step)

    def finish_trial(self, number: int, state: str, value: float | None = None, error: str | None = None) -> None:
        """Record the trial's outcome once ("completed" needs a finite value); a repeat of the same outcome is a
        no-op, another outcome is refused. Allowed in any study status (late ends after a cancel are kept);
        it also records a new best, completes the study at its n_trials-th outcome, or ends a cancelling
        study once nothing is left unfinished. An ended study keeps its status."""
        t = self.trial(number)
        if state not in TRIAL_OUTCOMES:
            raise ValueError(f"a trial ends {' / '.join(TRIAL_OUTCOMES)}, not {state!r}")
        if t.state in TRIAL_OUTCOMES:
            if t.state == state:
                return
            raise TrialOutcomeError(f"trial {number} of study {self.id} already ended {t.state}")
        if state == TrialState.COMPLETED and not _finite(value):
            raise ValueError(f"a completed trial needs a finite objective value, not {value!r}")
        pruned_at_step = t.prune_requested_at_step if state == TrialState.PRUNED else None
        self._trial_finished(number=number, state=state, value=float(value) if _finite(value) else None,
                             pruned_at_step=pruned_at_step, error=error)
        if state == TrialState.COMPLETED:
            v = self.trials[number].value
            if (self.best is None or self.better(v, self.best["value"])
                    or (v == self.best["value"] and number < self.best["number"])):
                self._best_trial_improved(number=number, value=v, params=t.params, job_id=t.job_id)
        finished = sum(1 for t in self.trials.values() if t.state in TRIAL_OUTCOMES)
        if self.status == StudyStatus.RUNNING and finished >= self.n_trials:
            self._completed(reason=f"all {self.n_trials} trials finished")
        elif self.status == StudyStatus.CANCELLING and not self.unfinished:
            self._cancelled(reason=self.cancel_reason or "cancelled by request", unfinished=[])

    @event("TrialFinished")
    def _trial_finished(self, number: int, state: str, value: float | None, pruned_at_step: int | None,
                        error: str | None) -> None:
        self.trials[number] = replace(self.trials[number], state=state, value=value, pruned_at_step=pruned_at_step,
                                      error=error)

    @event("BestTrialImproved")
    def _best_trial_improved(self, number: int, value: float, params: dict[str, Any], job_id: UUID) -> None:
        self.best = {"number": number, "params": params, "value": value, "job_id": job_id}

    # ---- the study's end ------------------------------------------------------------------------
    def request_cancel(self, reason: str = "cancelled by request") -> None:
        """Cancel at once when no trial is queued or running; otherwise wait for them ("cancelling")."""
        if self.is_finished:
            raise StudyFinishedError(f"study {self.id} is already {self.status}")
        if self.status == StudyStatus.CANCELLING:
            return
        if self.unfinished:
            self._cancel_requested(reason=reason, running=self.unfinished)
        else:
            self._cancelled(reason=reason, unfinished=[])

    @event("CancelRequested")
    def _cancel_requested(self, reason: str, running: list[int]) -> None:
        self.status = StudyStatus.CANCELLING
        self.cancel_reason = reason

    def confirm_cancelled(self) -> None:
        """The driver stopped the remaining trials' jobs: end the cancelling study now."""
        if self.status == StudyStatus.CANCELLED:
            return
        if self.is_finished:
            raise StudyFinishedError(f"study {self.id} is already {self.status}")
        if self.status != StudyStatus.CANCELLING:
            raise StudyError(f"nobody asked to cancel study {self.id}")
        self._cancelled(reason=self.cancel_reason or "cancelled by request", unfinished=self.unfinished)

    @event("Cancelled")
    def _cancelled(self, reason: str, unfinished: list[int]) -> None:
        self.status = StudyStatus.CANCELLED
        self.finished_reason = reason

    def complete(self, reason: str) -> None:
        """The driver ends a running study early (timeout, sampler exhausted); no trial may be unfinished."""
        if self.status == StudyStatus.COMPLETED:
            return
        if self.is_finished:
            raise StudyFinishedError(f"study {self.id} is already {self.status}")
        if self.status != StudyStatus.RUNNING:
            raise StudyError(f"study {self.id} is {self.status}")
        if self.unfinished:
            raise StudyError(f"study {self.id} still has trials {self.unfinished} queued or running")
        self._completed(reason=reason)

    @event("Completed")
    def _completed(self, reason: str) -> None:
        self.status = StudyStatus.COMPLETED
        self.finished_reason = reason

    def fail(self, reason: str) -> None:
        """The study cannot go on (e.g. every trial failed). A repeat is a no-op."""
        if self.status == StudyStatus.FAILED:
            return
        if self.is_finished:
            raise StudyFinishedError(f"study {self.id} is already {self.status}")
        self._failed(reason=reason)

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.status = StudyStatus.FAILED
        self.finished_reason = reason
