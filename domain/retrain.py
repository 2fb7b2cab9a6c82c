"""The Retrain aggregate: a deployed variant's model retrained on new data, judged by a gate against what is deployed.

    training ──job failed or cancelled──► job_failed
       │ job completed: the gate decides on its test split figures (candidate and champion scored on the same rows)
       ├──► gate_failed (the reason holds the figures)
       └──► passed ──register_as──► registered ──challenger──► exporting ──► challenger_added
                                                                  └──────────► challenger_failed

The job is submitted in the same transaction as `Requested` (the retrain's id derives from the job's, so whoever
sees the job finish finds its retrain). Each later step is one event, guarded by the status, so a follower that
acts twice (a restart, two serve processes) records a step once: the second save conflicts or finds it done.
`decide_gate` is pure over the figures the event records, so the verdict can be checked again from the log.
No I/O here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.contract import FieldError
from domain.vocabulary import HIGHER_IS_BETTER, Direction, direction_of

_RETRAIN_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/retrains")
DEFAULT_TEST_FRACTION = 0.2


class RetrainStatus(StrEnum):
    TRAINING = "training"
    JOB_FAILED = "job_failed"
    GATE_FAILED = "gate_failed"
    PASSED = "passed"
    REGISTERED = "registered"
    EXPORTING = "exporting"
    CHALLENGER_ADDED = "challenger_added"
    CHALLENGER_FAILED = "challenger_failed"




def still_open(status: str, register_as: str | None, challenger: dict[str, Any] | None) -> bool:
    """Whether a retrain has a step left: a pass is final without `register_as`, a registration without
    `challenger`."""
    return (status in (RetrainStatus.TRAINING, RetrainStatus.EXPORTING)
            or (status == RetrainStatus.PASSED and register_as is not None)
            or (status == RetrainStatus.REGISTERED and challenger is not None))


class RetrainError(Exception):
    """A step the retrain's state does not allow; HTTP 409."""


class RetrainSpecError(FieldError):
    """A retrain field that cannot be used; `field` names it (HTTP 422)."""


def retrain_id(job_id: UUID) -> UUID:
    """The retrain whose job is `job_id`."""
    return uuid5(_RETRAIN_NAMESPACE, str(job_id))


def check_gate(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate as kept: {"metric", "min_value"?, "max_regression"?}; RetrainSpecError naming the field."""
    if gate is None:
        return None
    metric = gate.get("metric")
    if metric not in HIGHER_IS_BETTER:
        raise RetrainSpecError("gate.metric", f"one of {', '.join(HIGHER_IS_BETTER)}")
    out: dict[str, Any] = {"metric": metric}
    for key in ("min_value", "max_regression"):
        value = gate.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RetrainSpecError(f"gate.{key}", "a finite number")
        if key == "max_regression" and value < 0:
            raise RetrainSpecError("gate.max_regression", "0 or more (0: at least as good as the deployed version)")
        out[key] = float(value)
    return out


def retrain_validation(original: dict[str, Any] | None) -> dict[str, Any]:
    """The validation a retrain's job runs with: its original's when that held out a test split, else a holdout
    (or the original's time-series split) with a test split of DEFAULT_TEST_FRACTION."""
    original = dict(original or {"strategy": "holdout"})
    if original.get("test_fraction"):
        return original
    if original.get("strategy") == "time_series":
        return {**original, "test_fraction": DEFAULT_TEST_FRACTION}
    seed = {"seed": original["seed"]} if original.get("seed") is not None else {}
    return {"strategy": "holdout", "test_fraction": DEFAULT_TEST_FRACTION, **seed}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    figures: dict[str, Any]


def decide_gate(gate: dict[str, Any] | None, metrics: dict[str, Any], champion_problem: str | None = None) -> Verdict:
    """Whether a candidate whose job reported `metrics` (its final metrics: `test_<m>` and, when the deployed version
    could be scored on the same rows, `champion_test_<m>`) passes `gate`. `champion_problem` says why the deployed
    version has no figure (its features differ from the new data's). `min_value` is the value the candidate must
    reach (at least it for a metric where higher is better, at most it where lower is); `max_regression` how much
    worse than the deployed version it may be (0: at least as good)."""
    if gate is None:
        return Verdict(True, "no gate", {})
    metric = gate["metric"]
    higher = direction_of(metric) is Direction.MAXIMIZE
    candidate, champion = metrics.get(f"test_{metric}"), metrics.get(f"champion_test_{metric}")
    figures: dict[str, Any] = {"metric": metric, "direction": "higher is better" if higher else "lower is better",
                               "candidate": candidate, "champion": champion}
    if candidate is None:
        return Verdict(False, f"the new model reported no test_{metric} (no test split, or a metric of another "
                              "task)", figures)
    reasons: list[str] = []
    failed = False
    if "min_value" in gate:
        bound = gate["min_value"]
        ok = candidate >= bound if higher else candidate <= bound
        failed |= not ok
        reasons.append(f"test {metric} {candidate:.4f} {'meets' if ok else 'misses'} the threshold "
                       f"{'≥' if higher else '≤'} {bound:.4f}")
    if "max_regression" in gate:
        allowed = gate["max_regression"]
        if champion is None:
            failed = True
            reasons.append(f"cannot compare with the deployed version: {champion_problem or 'it was not scored'}")
        else:
            regression = (champion - candidate) if higher else (candidate - champion)
            figures["regression"] = regression
            ok = regression <= allowed
            failed |= not ok
            reasons.append(f"test {metric} {candidate:.4f} against the deployed version's {champion:.4f} on the same "
                           f"rows: {'a regression' if regression > 0 else 'an improvement'} of {abs(regression):.4f}"
                           f" ({'within' if ok else 'over'} the allowed {allowed:.4f})")
    return Verdict(not failed, "; ".join(reasons) or "the gate names no threshold", figures)


class Retrain(Aggregate):
    class Requested(Aggregate.Created):
        project: str
        deployment: str
        variant: str
        model: str  # the deployed variant's model and version: the champion and the lineage retrained
        version: int
        job_id: UUID
        gate: dict[str, Any] | None
        register_as: str | None
        challenger: dict[str, Any] | None  # {"weight", "variant"}: add the registered version to the deployment
        champion: dict[str, Any]  # the deployed ONNX artifact the job scores on its test split

    @classmethod
    def request(cls, *, job_id: UUID, project: str, deployment: str, variant: str, model: str, version: int,
                gate: dict[str, Any] | None, register_as: str | None, challenger: dict[str, Any] | None,
                champion: dict[str, Any]) -> Retrain:
        gate = check_gate(gate)
        if challenger is not None and register_as is None:
            raise RetrainSpecError("challenger", "needs register_as: only a registered version can serve")
        return cls(id=retrain_id(job_id), project=project, deployment=deployment, variant=variant, model=model,
                   version=version, job_id=job_id, gate=gate, register_as=register_as, challenger=challenger,
                   champion=champion)

    @event(Requested)
    def __init__(self, id: UUID, project: str, deployment: str, variant: str, model: str, version: int, job_id: UUID,
                 gate: dict[str, Any] | None, register_as: str | None, challenger: dict[str, Any] | None,
                 champion: dict[str, Any]) -> None:
        self.project, self.deployment, self.variant, self.model, self.version = (project, deployment, variant,
                                                                                 model, version)
        self.job_id, self.gate, self.register_as, self.challenger = job_id, gate, register_as, challenger
        self.champion = champion
        self.status = RetrainStatus.TRAINING
        self.reason: str | None = None
        self.figures: dict[str, Any] = {}
        self.registered_version: int | None = None
        self.export_id: UUID | None = None
        self.challenger_variant: str | None = None
        self.error: str | None = None  # why a passed version could not become a challenger

    @property
    def is_open(self) -> bool:
        return still_open(self.status, self.register_as, self.challenger)

    def _check(self, *allowed: RetrainStatus) -> None:
        if self.status not in allowed:
            raise RetrainError(f"retrain {self.id} is {self.status}")

    # ---- the job's outcome ------------------------------------------------------------------------
    def job_failed(self, status: str, error: str | None) -> None:
        self._check(RetrainStatus.TRAINING)
        self._job_failed(status=status, error=error)

    @event("JobFailed")
    def _job_failed(self, status: str, error: str | None) -> None:
        self.status, self.reason = RetrainStatus.JOB_FAILED, f"the job {status}" + (f": {error}" if error else "")

    def judge(self, metrics: dict[str, Any], champion_problem: str | None = None) -> Verdict:
        """Decide the gate on the completed job's metrics: GatePassed or GateFailed, with the figures."""
        self._check(RetrainStatus.TRAINING)
        verdict = decide_gate(self.gate, metrics, champion_problem)
        (self._gate_passed if verdict.passed else self._gate_failed)(reason=verdict.reason, figures=verdict.figures)
        return verdict

    @event("GatePassed")
    def _gate_passed(self, reason: str, figures: dict[str, Any]) -> None:
        self.status, self.reason, self.figures = RetrainStatus.PASSED, reason, figures

    @event("GateFailed")
    def _gate_failed(self, reason: str, figures: dict[str, Any]) -> None:
        self.status, self.reason, self.figures = RetrainStatus.GATE_FAILED, reason, figures

    # ---- after a pass -----------------------------------------------------------------------------
    def version_registered(self, version: int) -> None:
        self._check(RetrainStatus.PASSED)
        self._version_registered(model=self.register_as, version=version)

    @event("VersionRegistered")
    def _version_registered(self, model: str, version: int) -> None:
        self.status, self.registered_version = RetrainStatus.REGISTERED, version

    def export_requested(self, export_id: UUID) -> None:
        self._check(RetrainStatus.REGISTERED)
        self._export_requested(export_id=export_id)

    @event("ExportRequested")
    def _export_requested(self, export_id: UUID) -> None:
        self.status, self.export_id = RetrainStatus.EXPORTING, export_id

    def challenger_added(self, variant: str, weight: int, revision: int) -> None:
        self._check(RetrainStatus.EXPORTING)
        self._challenger_added(variant=variant, weight=weight, revision=revision)

    @event("ChallengerAdded")
    def _challenger_added(self, variant: str, weight: int, revision: int) -> None:
        self.status, self.challenger_variant = RetrainStatus.CHALLENGER_ADDED, variant

    def challenger_failed(self, reason: str) -> None:
        self._check(RetrainStatus.REGISTERED, RetrainStatus.EXPORTING)
        self._challenger_failed(reason=reason)

    @event("ChallengerFailed")
    def _challenger_failed(self, reason: str) -> None:
        self.status, self.error = RetrainStatus.CHALLENGER_FAILED, reason
