"""Training jobs: submit, read, list; their metrics and logs; the comparison of runs."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from api.limits import MAX_CODE_PARAMS_BYTES, MAX_CODE_PARAMS_DEPTH, SafeText
from api.schemas.code import CODE_ID_PATTERN
from api.schemas.common import MAX_TAGS, MAX_TIMEOUT_S, NO_CONTROL, Tag
from api.schemas.datasets import DatasetIn
from domain.contract import LogLevel, LogStream
from domain.frameworks import MAX_LIGHTGBM_LEAVES, MAX_PARAMS, MAX_TORCH_PARAMETERS, describe_params
from domain.training_job import DEFAULT_TIMEOUT_S
from domain.validation import MAX_GAP, MAX_K
from domain.resources import waiting_for
from domain.vocabulary import Framework, JobStatus, Priority, Task


PARAMS_HELP = (f"an allowlist per framework (unknown names are refused; a name and its alias are one parameter): "
               f"{describe_params()}. The compute budget: n_estimators x num_leaves (x classes) at most "
               f"{MAX_LIGHTGBM_LEAVES:,} leaves; a PyTorch network at most {MAX_TORCH_PARAMETERS:,} weights on the "
               f"dataset's features")


MAX_ARGS, MAX_ARG_CHARS = 100, 4096
MAX_CPUS, MAX_MEMORY_MB, MAX_GPUS = 64, 1024 * 1024, 8
CODE_RESOURCES = {"cpus": 1, "memory_mb": 2048, "gpus": 0}  # a code job's, when it names none


class CodeIn(BaseModel):
    """What a code job runs: a bundle of the project (POST /api/v1/code), its entrypoint and the script's args."""
    model_config = ConfigDict(extra="forbid")
    code_id: str = Field(pattern=CODE_ID_PATTERN, description="a code bundle of the job's project (32 hex digits)")
    entrypoint: SafeText = Field(min_length=4, max_length=200,
                                 description="a .py file at the bundle's top level (its `entrypoints`)")
    args: list[Annotated[SafeText, Field(max_length=MAX_ARG_CHARS)]] = Field(default_factory=list, max_length=MAX_ARGS,
                                 description=f"the script's command-line arguments: at most {MAX_ARGS}, each at most "
                                             f"{MAX_ARG_CHARS} characters, {NO_CONTROL}")


class ResourcesIn(BaseModel):
    """What a code job's script may use; past `memory_mb` it is stopped ("out of memory (limit N MB)")."""
    model_config = ConfigDict(extra="forbid")
    cpus: StrictInt = Field(default=CODE_RESOURCES["cpus"], ge=1, le=MAX_CPUS,
                            description=f"its thread count (OMP_NUM_THREADS etc.), 1 to {MAX_CPUS}")
    memory_mb: StrictInt = Field(default=CODE_RESOURCES["memory_mb"], ge=64, le=MAX_MEMORY_MB,
                                 description=f"resident memory of all its processes, 64 to {MAX_MEMORY_MB:,} MB")
    gpus: StrictInt = Field(default=CODE_RESOURCES["gpus"], ge=0, le=MAX_GPUS,
                            description=f"0 to {MAX_GPUS}: GPUs it needs. Only runners with that many take it (its "
                                        "script sees them as CUDA_VISIBLE_DEVICES; the PyTorch trainer trains on the "
                                        "first); while none is free the job is queued with `waiting_for: \"gpu\"`, "
                                        "and when no runner seen lately has them the submit is a 422")


class ValidationIn(BaseModel):
    """How the job's rows are split to validate (and test) its model (domain/validation.py). Fields another strategy
    uses are refused."""
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["holdout", "kfold", "time_series"] = Field(
        default="holdout", description="holdout: a shuffled split (stratified by class where possible), the default; "
        "kfold: k folds validate in turn, each fold's figures and their mean ± sd are reported and the final model "
        "trains on every row; time_series: oldest rows train, then `gap` rows are skipped, then the validation rows, "
        "then `gap` rows, then the test rows (no validation or test row is older than a training row)")
    valid_fraction: float | None = Field(default=None, gt=0, le=0.5, allow_inf_nan=False,
                                         description="holdout, time_series: share of rows that validate (0.2)")
    test_fraction: float | None = Field(default=None, ge=0, le=0.5, allow_inf_nan=False,
                                        description="holdout, time_series: share of rows held out as a test split "
                                                    "only the final model sees (0: none); with valid_fraction at "
                                                    "most 0.6")
    k: StrictInt | None = Field(default=None, ge=2, le=MAX_K, description=f"kfold: folds, 2 to {MAX_K} (5)")
    time_column: SafeText | None = Field(default=None, min_length=1, max_length=200,
                                         description="time_series: the column that orders rows (numbers or dates; "
                                                     "not a feature); none: the file's row order")
    gap: StrictInt | None = Field(default=None, ge=0, le=MAX_GAP, description="time_series: rows left out between "
                                                                              "train and validation, and validation "
                                                                              "and test (0)")
    seed: StrictInt | None = Field(default=None, ge=0, le=2**32 - 1, description="holdout, kfold: the shuffle's "
                                                                                 "seed (the job's own by default)")


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)  # commands get the plain strings
    name: SafeText = Field(min_length=1, max_length=200, description=f"1 to 200 characters, {NO_CONTROL}")
    framework: Framework = Field(description="a built-in trainer, or `python`: the project's own code (`code`)")
    task: Task = Field(description="what the model predicts (for a code job: what its ONNX model outputs)")
    dataset: DatasetIn | None = Field(default=None, description="required for a built-in framework; optional for "
                                                                "`python` (the script reads it at run.dataset_path)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description=f"the framework's parameters. Built-in frameworks: at most {MAX_PARAMS} "
                                               f"names, {PARAMS_HELP}. python: free-form JSON (at most "
                                               f"{MAX_CODE_PARAMS_BYTES // 1024} KB serialized, {MAX_CODE_PARAMS_DEPTH} "
                                               f"levels deep, finite numbers, {NO_CONTROL}) passed to the script as "
                                               f"run.params and never interpreted")
    code: CodeIn | None = Field(default=None, description="framework `python` only (and required there)")
    resources: ResourcesIn | None = Field(default=None, description="frameworks `python` (default "
                                          f"{CODE_RESOURCES}) and `pytorch` (`gpus`: train on a GPU runner's CUDA "
                                          "device; none: CPU). Only runners that have them take the job")
    priority: Priority = Priority.MEDIUM.value
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description=f"at most {MAX_TAGS} tags")
    timeout_s: StrictInt = Field(default=DEFAULT_TIMEOUT_S, ge=1, le=MAX_TIMEOUT_S,
                                 description="wall-clock limit of the job in seconds, 1 to 604800 (7 days)")
    validation: ValidationIn | None = Field(default=None, description="built-in frameworks: how rows are split to "
                                            "validate and test the model (default: a stratified 80/20 holdout)")


class RetryIn(BaseModel):
    """A retry of a failed or cancelled job: the original's spec with these overrides."""
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    params: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"maxProperties": MAX_PARAMS},
                                   description=f"merged over the original's params, then checked as a submit's "
                                               f"params: {PARAMS_HELP}")
    priority: Priority | None = Field(default=None, description="null: the original's")
    from_checkpoint: StrictBool = Field(default=True, description="start from the original's latest checkpoint "
                                                                  "where it has one (recorded on the new job)")


class JobAccepted(BaseModel):
    job_id: UUID
    status: JobStatus
    created_at: datetime


class ProgressPublic(BaseModel):
    current_step: int
    total_steps: int | None
    percentage_complete: float
    elapsed_s: float | None
    eta_s: float | None


class JobArtifact(BaseModel):
    name: str = Field(description="as the script named it (run.log_artifact(path, name))")
    uri: str
    sha256: str = Field(description="hex digest of its bytes")
    size_bytes: int


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
    status: JobStatus
    progress: ProgressPublic
    attempt: int = Field(description="the run number: runs started so far (each claim by a runner is a new run; "
                                     "a run's metric series is `?attempt=`). Graceful hand-backs start runs without "
                                     "spending the budget: lost_leases + 1 is the attempt max_attempts counts")
    lost_leases: int = Field(default=0, description="attempts spent: runs whose runner was lost; the job fails when "
                                                    "they reach max_attempts")
    max_attempts: int = Field(default=3, description="how many lost runners the job survives")
    hand_backs: int = Field(default=0, description="runs handed back gracefully (a runner stopping): no attempt spent")
    requeue_reason: str | None = Field(default=None, description="why the job was last put back in the queue "
                                                                 "(null: never)")
    runner_id: str | None
    cancel_requested: bool
    created_by: str | None = Field(default=None, description="the principal that submitted it")
    correlation_id: str | None = Field(default=None, description="the submit's X-Request-Id (or generated)")
    study_id: UUID | None = Field(default=None, description="the study this job is a trial of (null: a plain job)")
    trial_number: int | None = Field(default=None, description="its trial number in that study")
    code: dict[str, Any] | None = Field(default=None, description="a code job's bundle (`code_id`, `sha256`), "
                                                                  "`entrypoint` and `args` (null: a built-in trainer)")
    resources: dict[str, Any] | None = Field(default=None, description="what it needs of a runner: `cpus`, "
                                             "`memory_mb`, `gpus` (a code job's, or a PyTorch job's that asked)")
    waiting_for: str | None = Field(default=None, description="while queued, what it waits for beyond its turn: "
                                    "`gpu` (only runners with a GPU take it); null otherwise")
    retry_of: UUID | None = Field(default=None, description="the failed or cancelled job this one retries (null: "
                                                            "none)")
    from_checkpoint: bool = Field(default=False, description="a retry that starts from the latest checkpoint of "
                                                             "the job it retries (false for a job that is no retry)")
    resumed_from_step: int | None = Field(default=None, description="the step of the checkpoint the current attempt "
                                                                   "started from (null: it started from the beginning)")
    retried_by: UUID | None = Field(default=None, description="the latest retry of this job (null: never retried)")
    retries: list[UUID] = Field(default_factory=list, description="every retry of this job, oldest first")
    validation: dict[str, Any] | None = Field(default=None, description="how its rows are split, every field filled "
                                              "in (null: the default 80/20 holdout)")
    best_step: int | None = Field(default=None, description="the step whose model was kept (early stopping keeps the "
                                  "best one, not the last); null until it completes")
    final_metrics: dict[str, float] = Field(description="on the validation split (kfold: the folds' mean), with "
                                            "`test_<metric>` on a test split and `<metric>_sd` over folds; the full "
                                            "report is GET /api/v1/training/jobs/{job_id}/evaluation")
    artifact: dict[str, Any] | None
    artifacts: list[JobArtifact] = Field(default_factory=list, description="files a code job kept with "
                                         "run.log_artifact (besides its model); download one at "
                                         "GET /api/v1/training/jobs/{job_id}/artifacts/{name}")
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: int

    @model_validator(mode="after")
    def _waiting(self) -> JobPublic:
        self.waiting_for = waiting_for(self.status, self.resources)
        if self.best_step is None and self.artifact and isinstance(self.artifact.get("best_step"), int):
            self.best_step = self.artifact["best_step"]
        return self


class Evaluation(BaseModel):
    """A completed job's evaluation report (runners/trainers/evaluation.py). `splits` has "validation" (k-fold: the
    out-of-fold predictions of every row) and "test" where the job held one out; each: `rows`, `metrics`, and for
    classification `log_loss`, `confusion_matrix` {labels, matrix (rows: true class, columns: predicted)},
    `per_class` [{label, precision, recall, f1, support}], `roc` and `pr` (per class one-vs-rest; binary: the
    positive class) with `auc` / `average_precision` and at most 101 points, `calibration` {mean_predicted,
    fraction_positive, count, expected_calibration_error}, `worst_rows` (highest log loss); for regression
    `metrics` with mape and smape, `mape_rows`, `residual_quantiles` and `worst_rows` (largest error). Rows are
    named by their number in the dataset (0: the first data row)."""
    job_id: UUID
    name: str
    status: JobStatus
    task: Task
    validation: dict[str, Any] | None = Field(description="how the rows were split (null: the default holdout)")
    best_step: int | None = Field(default=None, description="the step whose model was kept")
    final_metrics: dict[str, float]
    splits: dict[str, dict[str, Any]]
    folds: dict[str, Any] | None = Field(default=None, description="k-fold: `per_fold` metrics, their `mean` and "
                                                                   "`sd`")
    baseline: dict[str, Any] | None = Field(default=None, description="forecasting: the seasonal-naive baseline "
                                            "(`kind`, `season`, `horizon`, `series`), its `metrics` per window and "
                                            "the model's `skill` (1 - MAE / the baseline's MAE; above 0 beats it)")
    champion: dict[str, Any] | None = Field(default=None, description="a retrain's job: the deployed version "
                                            "(`model`, `version`) scored on the same test rows: its `metrics`, or the "
                                            "`error` that kept it from being compared")
    feature_importance: list[dict[str, Any]] | None = Field(default=None, description="[{feature, importance}], "
                                                            "most important first")
    feature_importance_kind: str | None = Field(default=None, description="gain (LightGBM's total gain) or "
                                                "permutation (the drop in accuracy, or R², when a feature is "
                                                "shuffled)")


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class LatestValue(BaseModel):
    step: int
    value: float


class MetricPointPublic(BaseModel):
    step: int
    value: float
    ts: datetime


class MetricSeries(BaseModel):
    name: str
    attempt: int | None = Field(description="the run the points are of; for a merged series (no `?attempt=`), the "
                                            "latest run, whose points follow those of the runs it resumed from")
    points: list[MetricPointPublic]


MAX_SERIES_NAMES = 20


class MetricNames(BaseModel):
    job_id: UUID
    names: list[str]
    latest: dict[str, LatestValue] = Field(description="each metric's last point (its latest attempt)")
    series: list[MetricSeries] | None = Field(
        default=None, description="with `?names=`: each asked metric that has points (in `attempt`, else its merged "
                                  "series across runs), downsampled to `max_points`, in the order asked")
    missing: list[str] | None = Field(default=None, description="with `?names=`: the asked metrics without points")


class ComparedRun(BaseModel):
    job_id: UUID
    name: str
    status: JobStatus
    attempt: int | None
    final_metrics: dict[str, float]
    evaluation: dict[str, Any] | None = Field(default=None, description="its evaluation report's figures (null: "
                                              "none yet): per split `rows`, `metrics` and, for classification, "
                                              "`per_class` [{label, f1, support, roc_auc}]; k-fold `folds` {mean, "
                                              "sd}; `best_step`; `top_features` (the 5 most important)")
    points: list[MetricPointPublic]


class Comparison(BaseModel):
    metric: str
    runs: list[ComparedRun]


class LogLinePublic(BaseModel):
    attempt: int = Field(description="the run it belongs to")
    seq: int = Field(description="its place in the run: lines of a run are numbered in the order they were captured")
    ts: datetime
    level: LogLevel
    stream: LogStream = Field(description="stdout or stderr of the training process, or Python's logging and "
                                          "warnings of the training thread")
    message: str
    runner_id: str


class LogLines(BaseModel):
    job_id: UUID
    lines: list[LogLinePublic] = Field(description="in (attempt, seq) order")
    next_after: str | None = Field(description="`after` for the lines that come next (\"attempt:seq\" of the last "
                                               "line here; the request's own `after` when none matched)")
