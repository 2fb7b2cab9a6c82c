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
from pydantic import BaseModel, ConfigDict, Field

from domain.contract import (RUNNER_HELLO, TELEMETRY_FEEDBACK, TELEMETRY_LOGS, TELEMETRY_METRICS,
                             TELEMETRY_PREDICTIONS, WORK_PREFIX, FeedbackBatch, LogBatch, MetricBatch, PredictionBatch,
                             RunnerCapabilities, WorkItem, event_subject)
from domain.registry import PUBLIC_AGGREGATES
from domain.vocabulary import Framework, Priority, RevisionChange, Task, TrialState, WorkKind

P = TypeVar("P", bound=BaseModel)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Submitted(_Payload):
    name: str
    framework: Framework
    task: Task
    dataset: dict[str, Any]
    params: dict[str, Any]
    priority: Priority
    tags: list[str]
    timeout_s: int
    max_attempts: int
    study_id: str | None = None
    trial_number: int | None = None
    report_metric: str | None = None
    project: str = Field(default="default", description="the job's project (a study's trial: its study's); events "
                                                        "stored before projects: 'default'")
    retry_of: str | None = Field(default=None, description="the failed or cancelled job this one retries (null: a "
                                                           "first submit)")
    from_checkpoint: bool = Field(default=False, description="a retry that starts from the latest checkpoint of the "
                                                             "job it retries (false for a job that is no retry)")
    code: dict[str, Any] | None = Field(default=None, description="a code job (framework python): the bundle's "
                                                                  "`code_id` and `sha256`, `entrypoint`, `args`; null "
                                                                  "for a built-in trainer (and events stored before "
                                                                  "code jobs)")
    resources: dict[str, Any] | None = Field(default=None, description="what it needs of a runner: `cpus`, "
                                             "`memory_mb`, `gpus` (a code job's, or a PyTorch job's that asked)")
    validation: dict[str, Any] | None = Field(default=None, description="how its rows are split: `strategy` "
                                              "(holdout, kfold, time_series) and every field it uses; null: the "
                                              "default 80/20 holdout (and events stored before validation)")
    champion: dict[str, Any] | None = Field(default=None, description="a retrain's job: the deployed version's ONNX "
                                            "artifact (`uri`, `sha256`, `feature_names`, …, `model`, `version`) it "
                                            "also scores on its test split; null for any other job")


class Started(_Payload):
    """A runner claimed the job: attempt N under a new lease (`lease_id` is a digest; the token stays private)."""
    attempt: int
    runner_id: str
    previous_runner_id: str | None
    lease_id: str | None
    resumed_from_step: int | None = Field(default=None, description="the step of the checkpoint this attempt starts "
                                                                    "from (null: from the beginning; events stored "
                                                                    "before this field was added: null)")


class Requeued(_Payload):
    """Back in the queue: handed back by a stopping runner (`lost` false, no attempt spent), its lease expired
    (`lost` true, one of `max_attempts` spent), or its work item went missing. A work item follows."""
    attempt: int
    reason: str
    lost: bool
    lost_leases: int
    priority: Priority
    hand_backs: int = Field(default=0, description="graceful hand-backs so far, this one included (events stored "
                                                   "before this field was added count 0)")
    work_kind: WorkKind | None = Field(default=None, description="the queue it goes back to (`code`: only runners "
                                                                 "that accept code; null in events stored before "
                                                                 "this field: the aggregate's own kind)")
    gpus: int = Field(default=0, description="the GPUs the work needs: > 0 puts its work item on "
                                             "`trainyard.work.<priority>.gpu.<kind>.<id>`, which only GPU runners read "
                                             "(0 in events stored before this field)")


class LeaseLost(_Payload):
    """The last lease the job could lose: a `failed` event follows."""
    attempt: int
    reason: str
    lost_leases: int


class ProgressReported(_Payload):
    attempt: int
    current_step: int
    total_steps: int


class KeptArtifact(BaseModel):
    name: str = Field(description="as the script named it (run.log_artifact)")
    uri: str
    sha256: str
    size_bytes: int


class Completed(_Payload):
    attempt: int
    final_metrics: dict[str, float]
    artifact: dict[str, Any]
    total_steps: int | None = None
    artifacts: list[KeptArtifact] | None = Field(default=None, description="the files the job kept besides its "
                                                 "model: a code job's (run.log_artifact), a built-in trainer's "
                                                 "evaluation report (`evaluation.json`); null when none, and in "
                                                 "events stored before artifacts")


class Failed(_Payload):
    attempt: int
    error: str


class CancelRequested(_Payload):
    attempt: int
    runner_id: str | None


class Cancelled(_Payload):
    attempt: int
    reason: str


# ---- study ------------------------------------------------------------------------------------------
class StudyCreated(_Payload):
    """A study was created: its trials will run as training jobs carrying `study_id` and `trial_number`."""
    name: str
    framework: Framework
    task: Task
    dataset: dict[str, Any]
    objective: dict[str, Any]
    search_space: dict[str, Any]
    fixed_params: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int
    max_parallel: int
    timeout_s: int | None
    priority: Priority
    tags: list[str]
    project: str = Field(default="default", description="the study's project (its trials' jobs belong to it too); "
                                                        "events stored before projects: 'default'")
    code: dict[str, Any] | None = Field(default=None, description="framework python: the bundle (code_id, sha256), "
                                        "entrypoint and args every trial runs; null for a built-in framework")
    resources: dict[str, Any] | None = Field(default=None, description="framework python: each trial's cpus, "
                                             "memory_mb, gpus")
    validation: dict[str, Any] | None = Field(default=None, description="how every trial splits its rows (as a "
                                              "job's `validation`); null: the default holdout")


class TrialAsked(_Payload):
    """The sampler proposed trial `number` (recorded in the same transaction as its job `job_id`'s `submitted`)."""
    number: int
    params: dict[str, Any]
    job_id: str


class TrialStarted(_Payload):
    number: int


class TrialPruneRequested(_Payload):
    """The pruner stopped trial `number` at `step` (its job is cancelled; the trial ends `pruned`)."""
    number: int
    step: int
    value: float | None


class TrialFinished(_Payload):
    number: int
    state: Literal[TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED]
    value: float | None
    pruned_at_step: int | None
    error: str | None


class BestTrialImproved(_Payload):
    number: int
    value: float
    params: dict[str, Any]
    job_id: str


class StudyCancelRequested(_Payload):
    reason: str
    running: list[int]


class StudyCancelled(_Payload):
    reason: str
    unfinished: list[int]


class StudyCompleted(_Payload):
    reason: str


class StudyFailed(_Payload):
    reason: str


# ---- model registry ------------------------------------------------------------------------------------
class ModelCreated(_Payload):
    name: str
    description: str
    tags: list[str]
    project: str = Field(default="default", description="the model's project (its name is unique in it); events "
                                                        "stored before projects: 'default'")


class VersionRegistered(_Payload):
    """A completed training job's artifact became version `version`, with its lineage (job, framework, task,
    dataset and its sha256, params, final metrics, artifact uri and sha256, feature names, class labels)."""
    version: int
    job_id: str
    lineage: dict[str, Any]


class OnnxAttached(_Payload):
    """An export of `version` completed: its ONNX artifact is what deployments of the version serve."""
    version: int
    export_id: str
    onnx: dict[str, Any]
    parity: dict[str, Any]


class AliasSet(_Payload):
    alias: str
    version: int
    previous: int | None


class AliasRemoved(_Payload):
    alias: str
    version: int


class ExportRequested(_Payload):
    """An ONNX export of a model version was asked for; a work item follows (runners run it like a job: the
    export's other events are the training job's lifecycle events, on `trainyard.v1.model_export.*`)."""
    model_name: str
    model_version: int
    format: Literal["onnx"]
    tolerance: float
    source: dict[str, Any]
    priority: Priority
    timeout_s: int
    max_attempts: int
    project: str = Field(default="default", description="its model's project; events stored before projects: "
                                                        "'default'")


# ---- deployments and API keys ------------------------------------------------------------------------------
class DeploymentCreated(_Payload):
    """Revision 1. Each variant: name, model, version (alias if it was named by one), weight and the ONNX artifact
    it serves (uri, sha256, input/output names, feature names, class labels)."""
    name: str
    variants: list[dict[str, Any]]
    shadow: dict[str, Any] | None
    reason: str | None
    revision: int
    policy: dict[str, Any] | None = None
    project: str = Field(default="default", description="the deployment's project (its name is unique in it; its "
                                                        "variants serve that project's models); events stored "
                                                        "before projects: 'default'")


class DeploymentRevised(_Payload):
    """A new revision with the whole new state (traffic, promote, update, rollback, or an action of the automatic
    policy: `policy_step`, `policy_promote`, `policy_halt` with the challenger `variant` and the `figures` the
    decision was based on). Every revision event of the domain (TrafficChanged, Promoted, Updated, RolledBack,
    PolicyStepped, PolicyPromoted, PolicyHalted, and Revised as stored before them) publishes as this one."""
    revision: int
    change: Literal[RevisionChange.TRAFFIC, RevisionChange.PROMOTE, RevisionChange.UPDATE, RevisionChange.ROLLBACK,
                    RevisionChange.POLICY_STEP, RevisionChange.POLICY_PROMOTE, RevisionChange.POLICY_HALT]
    variants: list[dict[str, Any]]
    shadow: dict[str, Any] | None
    reason: str | None
    rolled_back_to: int | None
    variant: str | None = None
    figures: dict[str, Any] | None = None


class DeploymentPolicySet(_Payload):
    """The automatic ramp/promote/rollback policy was set (or removed: null)."""
    policy: dict[str, Any] | None
    reason: str | None


class DeploymentDeactivated(_Payload):
    revision: int
    reason: str | None


class ApiKeyCreated(_Payload):
    """An inference API key: its sha256 (never the key), scope and rate limit."""
    name: str
    key_hash: str
    prefix: str
    deployments: list[str]
    rate_limit_per_s: float | None
    project: str = Field(default="default", description="the key's project: it reaches that project's deployments "
                                                        "only; events stored before projects: 'default'")


class ApiKeyRevoked(_Payload):
    reason: str | None


# ---- schedules ---------------------------------------------------------------------------------------------
class ScheduleCreated(_Payload):
    """A schedule: its cron read in `timezone`, its run `kind` and the `template` each run submits (a job's or a
    study's fields; a retrain's `deployment` and request), its overlap and catch-up policies; `cursor`: the time its
    first scheduled time comes after."""
    name: str
    project: str
    cron: str
    timezone: str
    kind: Literal["job", "study", "retrain"]
    template: dict[str, Any]
    overlap: Literal["skip", "queue", "cancel_previous"]
    catch_up: Literal["none", "latest", "all"]
    enabled: bool
    cursor: datetime


class ScheduleFired(_Payload):
    """A scheduled time ran: `run_id` is the job or study submitted (its id derives from the schedule and the time),
    `cancelled` the previous run it stopped (overlap cancel_previous); `trigger` cron, catch_up or manual."""
    scheduled_for: datetime
    trigger: Literal["cron", "catch_up", "manual"]
    run_id: str
    run_kind: Literal["job", "study", "retrain"]
    reason: str
    cancelled: str | None


class ScheduleSkipped(_Payload):
    """A scheduled time did not run, and why (the previous run still running under overlap skip; a template that
    no longer makes a valid run)."""
    scheduled_for: datetime
    trigger: Literal["cron", "catch_up", "manual"]
    reason: str


class ScheduleMissed(_Payload):
    """`count` scheduled times from `first` to `last` passed while no scheduler ran, and the catch-up policy did
    not run them."""
    first: datetime
    last: datetime
    count: int
    reason: str


class ScheduleChanged(_Payload):
    """The fields that changed (name, cron, timezone, template, overlap, catch_up; `cursor` with a new cron)."""
    changes: dict[str, Any]


class SchedulePaused(_Payload):
    reason: str


class ScheduleResumed(_Payload):
    """Active again; its next time is the first after `cursor`."""
    cursor: datetime


class ScheduleDeleted(_Payload):
    reason: str


# ---- retrains ----------------------------------------------------------------------------------------------
class RetrainRequested(_Payload):
    """A deployed variant's model retrained on new data: `job_id` was submitted with it, `champion` is the deployed
    ONNX artifact scored on the same test split; `gate`, `register_as` and `challenger` say what a pass does."""
    project: str
    deployment: str
    variant: str
    model: str
    version: int
    job_id: str
    gate: dict[str, Any] | None
    register_as: str | None
    challenger: dict[str, Any] | None
    champion: dict[str, Any]


class RetrainJobFailed(_Payload):
    status: str
    error: str | None


class RetrainGateDecided(_Payload):
    """The gate's verdict: `reason` holds the figures (candidate and champion on the test split, the regression and
    what was allowed), `figures` the same as numbers."""
    reason: str
    figures: dict[str, Any]


class RetrainVersionRegistered(_Payload):
    model: str
    version: int


class RetrainExportRequested(_Payload):
    export_id: str


class RetrainChallengerAdded(_Payload):
    variant: str
    weight: int
    revision: int


class RetrainChallengerFailed(_Payload):
    reason: str


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid")
    event_id: str
    aggregate: Literal[tuple(a.name for a in PUBLIC_AGGREGATES)]  # type: ignore[valid-type]
    aggregate_id: str
    aggregate_version: int
    occurred_at: datetime
    type: str
    actor: str
    correlation_id: str | None
    causation_id: str | None
    trace_id: str | None
    project: str = Field(description="the project the aggregate belongs to ('default' for what predates projects): "
                                     "subscribers filter on it")
    payload: P


TRAINING_JOB_EVENTS: dict[str, type[BaseModel]] = {
    "submitted": Submitted, "started": Started, "progress_reported": ProgressReported, "completed": Completed,
    "failed": Failed, "cancel_requested": CancelRequested, "cancelled": Cancelled, "requeued": Requeued,
    "lease_lost": LeaseLost,
}
STUDY_EVENTS: dict[str, type[BaseModel]] = {
    "created": StudyCreated, "trial_asked": TrialAsked, "trial_started": TrialStarted,
    "trial_prune_requested": TrialPruneRequested, "trial_finished": TrialFinished,
    "best_trial_improved": BestTrialImproved, "cancel_requested": StudyCancelRequested, "cancelled": StudyCancelled,
    "completed": StudyCompleted, "failed": StudyFailed,
}
MODEL_EVENTS: dict[str, type[BaseModel]] = {
    "created": ModelCreated, "version_registered": VersionRegistered, "onnx_attached": OnnxAttached,
    "alias_set": AliasSet, "alias_removed": AliasRemoved,
}
MODEL_EXPORT_EVENTS: dict[str, type[BaseModel]] = {
    "requested": ExportRequested, **{k: v for k, v in TRAINING_JOB_EVENTS.items() if k != "submitted"}}
DEPLOYMENT_EVENTS: dict[str, type[BaseModel]] = {
    "created": DeploymentCreated, "revised": DeploymentRevised, "deactivated": DeploymentDeactivated,
    "policy_set": DeploymentPolicySet}
API_KEY_EVENTS: dict[str, type[BaseModel]] = {"created": ApiKeyCreated, "revoked": ApiKeyRevoked}
SCHEDULE_EVENTS: dict[str, type[BaseModel]] = {
    "created": ScheduleCreated, "fired": ScheduleFired, "skipped": ScheduleSkipped, "missed": ScheduleMissed,
    "changed": ScheduleChanged, "paused": SchedulePaused, "resumed": ScheduleResumed, "deleted": ScheduleDeleted}
RETRAIN_EVENTS: dict[str, type[BaseModel]] = {
    "requested": RetrainRequested, "job_failed": RetrainJobFailed, "gate_passed": RetrainGateDecided,
    "gate_failed": RetrainGateDecided, "version_registered": RetrainVersionRegistered,
    "export_requested": RetrainExportRequested, "challenger_added": RetrainChallengerAdded,
    "challenger_failed": RetrainChallengerFailed}
EVENTS: dict[str, dict[str, type[BaseModel]]] = {
    "training_job": TRAINING_JOB_EVENTS, "study": STUDY_EVENTS, "model": MODEL_EVENTS,
    "model_export": MODEL_EXPORT_EVENTS, "deployment": DEPLOYMENT_EVENTS, "api_key": API_KEY_EVENTS,
    "schedule": SCHEDULE_EVENTS, "retrain": RETRAIN_EVENTS}


def specification() -> AsyncAPI:
    broker = NatsBroker("nats://127.0.0.1:4222")
    for aggregate, events in EVENTS.items():
        for name, model in events.items():
            broker.publisher(event_subject(aggregate, name), title=f"{aggregate}.{name}",
                             description=f"{aggregate.replace('_', ' ')} {name.replace('_', ' ')} (stream "
                                         "TRAINYARD_EVENTS, Nats-Msg-Id = event_id)",
                             schema=Envelope[model])  # type: ignore[valid-type]
    broker.publisher(TELEMETRY_METRICS, title="telemetry.metrics",
                     description="Metric points from runners (stream TRAINYARD_TELEMETRY, Nats-Msg-Id = batch_id)",
                     schema=MetricBatch)
    broker.publisher(TELEMETRY_LOGS, title="telemetry.logs",
                     description="Training log lines from runners: a job's output, logging, warnings and a failure's "
                                 "traceback (stream TRAINYARD_TELEMETRY, Nats-Msg-Id = batch_id; a line is identified "
                                 "by job_id, attempt and seq)", schema=LogBatch)
    broker.publisher(TELEMETRY_PREDICTIONS, title="telemetry.predictions",
                     description="Prediction records from inference servers, as columns (stream TRAINYARD_TELEMETRY, "
                                 "Nats-Msg-Id = batch_id)", schema=PredictionBatch)
    broker.publisher(TELEMETRY_FEEDBACK, title="telemetry.feedback",
                     description="Ground truth for earlier predictions, posted to the API (stream TRAINYARD_TELEMETRY, "
                                 "Nats-Msg-Id = batch_id)", schema=FeedbackBatch)
    broker.publisher(WORK_PREFIX + ".{priority}.{kind}.{aggregate_id}", title="work item",
                     description="Work for the runners (stream TRAINYARD_WORK, work-queue retention, Nats-Msg-Id = "
                                 "work:<event_id>); the claim, not the delivery, decides who runs it", schema=WorkItem)
    broker.publisher(WORK_PREFIX + ".{priority}.gpu.{kind}.{aggregate_id}", title="work item needing a GPU",
                     description="Work whose resources ask for GPUs: read only by runners that have one (consumers "
                                 "work-<priority>-gpu and work-<priority>-gpu-code)", schema=WorkItem)
    broker.publisher(RUNNER_HELLO, title="runner hello",
                     description="Core NATS, every few seconds from each runner: what it has (CPUs, memory, GPUs). "
                                 "The service keeps the runners it heard from; a job none of them could run is "
                                 "refused at submit", schema=RunnerCapabilities)
    return AsyncAPI(broker, title="Trainyard events", version="1.0.0",
                    description="Public NATS JetStream subjects of Trainyard. See docs/events.md.")


def document() -> str:
    return json.dumps(specification().to_specification().to_jsonable(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(document(), end="")


if __name__ == "__main__":
    main()
