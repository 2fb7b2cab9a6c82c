"""Request and response bodies of the REST API (`XxxIn` / `XxxPublic`)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import MAX_PARAM_KEY_CHARS, MAX_PARAM_TEXT_CHARS, MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH, SafeText
from domain.training_job import DEFAULT_TIMEOUT_S

Framework = Literal["lightgbm", "pytorch"]
Task = Literal["binary_classification", "multiclass_classification", "regression"]
Priority = Literal["low", "medium", "high", "critical"]
Status = Literal["queued", "running", "completed", "failed", "cancelled"]


NO_CONTROL = "no control characters (NUL included)"
Tag = Annotated[SafeText, Field(min_length=1, max_length=64, description=f"1 to 64 characters, {NO_CONTROL}")]
MAX_TAGS = 20
MAX_TIMEOUT_S = 7 * 24 * 3600


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: SafeText = Field(min_length=1, max_length=2048,
                          description="builtin://breast_cancer | builtin://wine | builtin://diabetes | "
                                      "file:///abs/path.csv|.parquet inside a dataset root (see POST "
                                      f"/api/v1/datasets); at most 2048 characters, {NO_CONTROL}")
    target: SafeText | None = Field(default=None, min_length=1, max_length=256,
                                    description="target column; required for file://; at most 256 characters, "
                                                f"{NO_CONTROL}")


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=200, description=f"1 to 200 characters, {NO_CONTROL}")
    framework: Framework
    task: Task
    dataset: DatasetIn
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=f"the framework's parameters (an allowlist per framework: unknown names are refused). At most "
                    f"{MAX_PARAMS_BYTES // 1024} KiB as JSON and {MAX_PARAMS_DEPTH} levels deep, keys 1 to "
                    f"{MAX_PARAM_KEY_CHARS} characters, text values at most {MAX_PARAM_TEXT_CHARS}, {NO_CONTROL}; "
                    "numbers finite (no NaN/Infinity). Compute is bounded: num_threads 1..16, epochs 1..10000, "
                    "batch_size 1..65536, hidden_sizes at most 8 layers of 1..2048 and 20M weights, "
                    "n_estimators 1..20000, num_leaves 2..4096")
    priority: Priority = "medium"
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description=f"at most {MAX_TAGS} tags")
    timeout_s: StrictInt = Field(default=DEFAULT_TIMEOUT_S, ge=1, le=MAX_TIMEOUT_S,
                                 description="wall-clock limit of the job in seconds, 1 to 604800 (7 days)")


class JobAccepted(BaseModel):
    job_id: UUID
    status: Status
    created_at: datetime


class ProgressPublic(BaseModel):
    current_step: int
    total_steps: int | None
    percentage_complete: float
    elapsed_s: float | None
    eta_s: float | None


class JobPublic(BaseModel):
    job_id: UUID
    name: str
    framework: Framework
    task: Task
    dataset: dict[str, Any]
    params: dict[str, Any]
    priority: Priority
    tags: list[str]
    timeout_s: int = Field(default=DEFAULT_TIMEOUT_S, description="wall-clock limit of the job in seconds")
    status: Status
    progress: ProgressPublic
    attempt: int = Field(description="runs started so far (each claim by a runner is a new attempt)")
    lost_leases: int = Field(default=0, description="attempts whose runner was lost; the job fails at max_attempts")
    max_attempts: int = Field(default=3, description="how many lost runners the job survives")
    runner_id: str | None
    cancel_requested: bool
    created_by: str | None = Field(default=None, description="the actor that submitted it (X-Trainyard-Actor)")
    correlation_id: str | None = Field(default=None, description="the submit's X-Request-Id (or generated)")
    study_id: UUID | None = Field(default=None, description="the study this job is a trial of (null: a plain job)")
    trial_number: int | None = Field(default=None, description="its trial number in that study")
    final_metrics: dict[str, float]
    artifact: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: int


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class LatestValue(BaseModel):
    step: int
    value: float


class MetricNames(BaseModel):
    job_id: UUID
    names: list[str]
    latest: dict[str, LatestValue] = Field(description="each metric's last point (its latest attempt)")


class MetricPointPublic(BaseModel):
    step: int
    value: float
    ts: datetime


class DatasetUploaded(BaseModel):
    uri: str = Field(description="file:// URI of the stored file, to use as a job's dataset.uri")
    sha256: str
    size_bytes: int
    rows: int
    columns: int
    column_names: list[str]


class MetricSeries(BaseModel):
    name: str
    attempt: int | None
    points: list[MetricPointPublic]


# ---- studies ---------------------------------------------------------------------------------------
StudyStatus = Literal["running", "cancelling", "completed", "cancelled", "failed"]
TrialState = Literal["queued", "running", "completed", "pruned", "failed"]
FREE_JSON = (f"at most {MAX_PARAMS_BYTES // 1024} KiB as JSON, {MAX_PARAMS_DEPTH} levels deep, keys 1 to "
             f"{MAX_PARAM_KEY_CHARS} characters, {NO_CONTROL}, finite numbers")


class ObjectiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: SafeText = Field(min_length=1, max_length=64, description="a final metric of the task: binary auc, "
                             "accuracy, logloss; multiclass accuracy, logloss, f1_macro; regression rmse, mae, r2")
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="default: maximize for auc, accuracy, f1_macro, r2; minimize otherwise")


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=200, description=f"1 to 200 characters, {NO_CONTROL}")
    framework: Framework
    task: Task
    dataset: DatasetIn
    objective: ObjectiveIn
    search_space: dict[str, Any] = Field(description='{"<param>": {"type": "float", "low", "high", "log"?, '
                                         '"step"?} | {"type": "int", "low", "high", "step"?, "log"?} | '
                                         '{"type": "categorical", "choices": [...]}}; at most 32 params; '
                                         + FREE_JSON)
    fixed_params: dict[str, Any] = Field(default_factory=dict, description="merged into every trial's params; "
                                         + FREE_JSON)
    sampler: dict[str, Any] = Field(default_factory=lambda: {"type": "tpe"},
                                    description='{"type": "tpe"|"random"|"grid"|"cmaes"|"qmc", "seed"?: int}')
    pruner: dict[str, Any] = Field(default_factory=lambda: {"type": "none"},
                                   description='{"type": "none"|"median"|"percentile"|"successive_halving"|'
                                               '"hyperband", ...its options}')
    n_trials: StrictInt = Field(ge=1, le=10_000, description="1 to 10,000")
    max_parallel: StrictInt = Field(default=2, ge=1, le=64, description="trials running at once, 1 to 64")
    timeout_s: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMEOUT_S,
                                        description="no new trials after this many seconds (each trial's own "
                                                    "job timeout too)")
    priority: Priority = "medium"
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description=f"at most {MAX_TAGS} tags")


class StudyAccepted(BaseModel):
    study_id: UUID
    status: StudyStatus
    created_at: datetime


class BestTrial(BaseModel):
    number: int
    params: dict[str, Any]
    value: float
    job_id: UUID


class StudyPublic(BaseModel):
    study_id: UUID
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
    status: StudyStatus
    reason: str | None = Field(default=None, description="why it ended (or is being cancelled)")
    counts: dict[str, int] = Field(description="trials per state: queued, running, completed, pruned, failed")
    best_trial: BestTrial | None
    created_by: str | None = None
    created_at: datetime
    finished_at: datetime | None


class StudyList(BaseModel):
    items: list[StudyPublic]
    total: int
    limit: int
    offset: int


class TrialPublic(BaseModel):
    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None
    job_id: UUID
    asked_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    pruned_at_step: int | None


class TrialList(BaseModel):
    items: list[TrialPublic]
    total: int
    limit: int
    offset: int


class HistoryPoint(BaseModel):
    number: int
    value: float
    best_so_far: float


class StudyHistory(BaseModel):
    study_id: UUID
    direction: Literal["maximize", "minimize"]
    points: list[HistoryPoint]


class Importances(BaseModel):
    study_id: UUID
    completed_trials: int
    importances: dict[str, float] = Field(description="Optuna's parameter importances (fANOVA), summing to 1; "
                                                      "empty with fewer than 2 completed trials")


class ComparedRun(BaseModel):
    job_id: UUID
    name: str
    status: Status
    attempt: int | None
    final_metrics: dict[str, float]
    points: list[MetricPointPublic]


class Comparison(BaseModel):
    metric: str
    runs: list[ComparedRun]


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemPublic(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    field: str | None = Field(default=None, description="the request field at fault, e.g. dataset.target")
    errors: list[FieldError] | None = None


def problems(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for these error statuses, each a problem+json body."""
    return {s: {"model": ProblemPublic, "content": {"application/problem+json": {}}} for s in statuses}


# ---- model registry -------------------------------------------------------------------------------
ModelName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                                 description="1 to 100 letters, digits, '.', '_' or '-'")]
AliasName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]{0,63}$",
                                 description="1 to 64 lowercase letters, digits, '_' or '-', starting with a letter")]
ExportStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ModelName
    description: SafeText = Field(default="", max_length=5000)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


class ModelPublic(BaseModel):
    name: str
    description: str
    tags: list[str]
    aliases: dict[str, int] = Field(description="alias → version number")
    latest_version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ModelList(BaseModel):
    items: list[ModelPublic]
    total: int
    limit: int
    offset: int


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: UUID = Field(description="a completed training job")


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: StrictInt = Field(ge=1, le=2**31 - 1)


class OnnxArtifact(BaseModel):
    uri: str
    sha256: str
    size_bytes: int | None = None
    opset: int | None = None
    input_name: str | None = None
    input_shape: list[int | None] = Field(description="[None, n_features]: any batch size")
    output_name: str | None = None


class ParityReport(BaseModel):
    max_abs_diff: float
    n_rows: int
    tolerance: float
    metric: str | None
    metric_native: float | None
    metric_onnx: float | None
    passed: bool


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["onnx"] = "onnx"
    tolerance: float = Field(default=1e-4, gt=0, le=1, allow_inf_nan=False,
                             description="largest allowed absolute difference of ONNX and native outputs "
                                         "(probabilities or values) on the validation split")


class ExportPublic(BaseModel):
    export_id: UUID = Field(validation_alias="id")
    model: str = Field(validation_alias="model_name")
    version: int = Field(validation_alias="model_version")
    format: str
    tolerance: float
    status: ExportStatus
    attempt: int
    runner_id: str | None
    artifact: dict[str, Any] | None
    parity: ParityReport | None
    error: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class VersionPublic(BaseModel):
    model: str = Field(validation_alias="model_name")
    version: int = Field(validation_alias="number")
    job_id: UUID
    aliases: list[str]
    lineage: dict[str, Any] = Field(description="job id, framework, task, dataset (and its sha256), params, final "
                                                "metrics, artifact (uri, sha256), feature names, class labels")
    onnx: OnnxArtifact | None = Field(description="the serving artifact: the last export that passed its parity check")
    parity: ParityReport | None
    exports: list[ExportPublic] = Field(default_factory=list)
    created_by: str | None
    created_at: datetime


class VersionList(BaseModel):
    items: list[VersionPublic]


# ---- deployments and API keys -------------------------------------------------------------------------
DeploymentName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                                      description="1 to 63 lowercase letters, digits or '-'")]
VariantName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
Reason = Annotated[SafeText, Field(max_length=500, description="why (kept in the deployment's history)")]


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelName
    version: StrictInt | None = Field(default=None, ge=1, le=2**31 - 1)
    alias: AliasName | None = None


class VariantIn(ModelRef):
    name: VariantName
    weight: StrictInt = Field(ge=0, le=100, description="integer share of traffic; the weights sum to 100")


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["accuracy", "logloss", "rmse", "mae"] = "accuracy"
    min_samples: StrictInt = Field(default=500, ge=10, le=10**8,
                                   description="labelled predictions each side needs at the current step")
    min_lift: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False,
                            description="the improvement (metric units) a promotion needs")
    max_p_value: float = Field(default=0.05, ge=1e-6, le=0.2, allow_inf_nan=False,
                               description="the always-valid p-value a promotion or a 'worse' verdict needs")
    max_p99_latency_ms: float | None = Field(default=None, gt=0, le=600_000, allow_inf_nan=False)
    max_error_rate: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    ramp: list[StrictInt] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1, max_length=20,
                                  description="the challenger's weights, increasing, ending at 100")
    step_every_s: StrictInt = Field(default=300, ge=1, le=7 * 86400,
                                    description="at least this long at each step")


class PolicySetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: PolicyIn | None
    reason: Reason | None = None


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DeploymentName
    variants: list[VariantIn] = Field(min_length=1, max_length=10)
    shadow: ModelRef | None = Field(default=None, description="gets a copy of every request; never answers")
    reason: Reason | None = None
    policy: PolicyIn | None = Field(default=None, description="ramp the challenger, promote or roll it back "
                                                              "automatically on the online comparison")


class DeploymentUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variants: list[VariantIn] = Field(min_length=1, max_length=10)
    shadow: ModelRef | None = None
    reason: Reason | None = None


class TrafficIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[VariantName, StrictInt] = Field(min_length=1, max_length=10)
    reason: Reason | None = None


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: VariantName
    reason: Reason | None = None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = None


class VariantPublic(BaseModel):
    name: str
    model: str
    version: int
    alias: str | None = None
    weight: int
    artifact: dict[str, Any] = Field(description="the ONNX artifact it serves (uri, sha256, input name, features)")


class ShadowPublic(BaseModel):
    model: str
    version: int
    alias: str | None = None
    artifact: dict[str, Any]


class DeploymentPublic(BaseModel):
    name: str
    revision: int
    active: bool
    variants: list[VariantPublic]
    shadow: ShadowPublic | None
    policy: dict[str, Any] | None = None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentList(BaseModel):
    items: list[DeploymentPublic]


class RevisionPublic(BaseModel):
    revision: int
    change: Literal["created", "traffic", "promote", "update", "rollback", "deactivate", "policy_step",
                    "policy_promote", "policy_halt"]
    reason: str | None
    figures: dict[str, Any] | None = Field(default=None, description="a policy action: what it was based on")
    variants: list[VariantPublic]
    shadow: ShadowPublic | None
    active: bool
    rolled_back_to: int | None
    actor: str | None
    at: datetime


class DeploymentHistory(BaseModel):
    name: str
    revisions: list[RevisionPublic] = Field(description="every revision, oldest first")


class PredictionSummary(BaseModel):
    revision: int
    variant: str
    model: str
    version: int
    shadow: bool
    requests: int
    errors: int
    p50_us: float
    p95_us: float
    p99_us: float


class PredictionStats(BaseModel):
    deployment: str
    items: list[PredictionSummary]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=100)
    deployments: list[DeploymentName] | Literal["*"] = Field(
        description='the deployments it may call, or "*" for all', max_length=100)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000, allow_inf_nan=False)


class ApiKeyPublic(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    deployments: list[str]
    rate_limit_per_s: float | None
    revoked_at: datetime | None
    revoked_reason: str | None
    created_by: str | None
    created_at: datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the key itself: shown this once, only its hash is kept")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                            description="the `request_id` a prediction answered with")
    label: SafeText | None = Field(default=None, min_length=1, max_length=200,
                                   description="classification: the true class, as predictions return it")
    value: float | None = Field(default=None, allow_inf_nan=False, description="regression: the true value")


class FeedbackAccepted(BaseModel):
    received: int
    known: int = Field(description="items whose prediction is already in ClickHouse")
    unknown: int = Field(description="items whose request id this deployment has not answered (yet): they are kept "
                                     "and count once their prediction lands")
    unknown_request_ids: list[str] = Field(description="the first 100 unknown ones")
