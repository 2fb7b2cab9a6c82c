"""Trainyard's public contract in one place: subjects, the event envelope, work items, runner reports and
telemetry batches (docs/events.md, docs/asyncapi.json). Shared by the API, runners and projections; no I/O.

- Domain events: `trainyard.v1.<aggregate>.<event>` (snake case), JSON envelope below, `Nats-Msg-Id` =
  `event_id` = uuid5(aggregate_id:version), so a re-publish has the same id and JetStream's dedup absorbs it.
- Work items: `trainyard.work.<priority>.<kind>.<aggregate_id>`: a small message saying "this aggregate has
  work of this kind"; what the runner needs comes back in the claim's reply (the aggregate owns it).
- Runner reports: NATS request/reply on `trainyard.rpc.runner.report`; every report after the claim carries
  the lease token, and the aggregate refuses any other lease.
- `trainyard.signal.work_ready` (core NATS, empty): the relay rings it after queueing work items; idle runners
  then look for work at once instead of polling. Only a hint: a forged one costs a look.
- Telemetry: `trainyard.v1.telemetry.metrics` columnar metric batches and `trainyard.v1.telemetry.logs` training
  log lines, `Nats-Msg-Id` = batch_id.
- Dead letters: `trainyard.v1.dlq.<original subject without its trainyard(.v1) prefix>`.
Every field that crosses the bus is bounded: anyone on the bus can publish.
"""
from __future__ import annotations

import binascii
import hashlib
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from typing_extensions import Required, TypedDict
from uuid import NAMESPACE_URL, UUID, uuid5

import numpy as np
import pybase64  # SIMD base64: the stdlib's decoder was most of a packed batch's decode
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_serializer,
                      model_validator)
from pydantic.json_schema import JsonSchemaValue

from domain.vocabulary import Priority, WorkKind

SUBJECT_PREFIX = "trainyard.v1"
TELEMETRY_METRICS = f"{SUBJECT_PREFIX}.telemetry.metrics"
TELEMETRY_LOGS = f"{SUBJECT_PREFIX}.telemetry.logs"
DLQ_PREFIX = f"{SUBJECT_PREFIX}.dlq"
REPORT_SUBJECT = "trainyard.rpc.runner.report"
RUNNER_HELLO = "trainyard.rpc.runner.hello"  # core NATS, `RunnerCapabilities`: "this runner is alive and has this"
WORK_PREFIX = "trainyard.work"
WORK_READY = "trainyard.signal.work_ready"  # core NATS, no payload: "new work items were queued" (idle runners look)
MAX_TEXT = 2000
_EVENT_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/events")
_ENVELOPE_KEYS = ("originator_id", "originator_version", "timestamp", "originator_topic", "metadata")
METADATA_KEYS = ("actor", "correlation_id", "causation_id", "trace_id")
# Every project-scoped aggregate belongs to one project; what existed before projects belongs to this one.
DEFAULT_PROJECT = "default"


def scoped(project: str | None, name: str) -> str:
    """A name unique across projects: the name itself in the default project (so ids and keys made before
    projects stay what they were), else "<project>/<name>"."""
    return name if not project or project == DEFAULT_PROJECT else f"{project}/{name}"


# ---- text -----------------------------------------------------------------------------------
# The one rule for text that crosses our edge: no control character (Unicode Cc, NUL included) and no lone
# surrogate (Cs). PostgreSQL text/jsonb cannot hold a NUL and UTF-8 cannot encode a surrogate, so either would
# poison every read model that copies it.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"  # Unicode Cc
_SURROGATE = r"\ud800-\udfff"  # Unicode Cs
_UNSAFE = re.compile(f"[{_CONTROL}{_SURROGATE}]")
# The rule as a JSON Schema pattern (ECMA-262 and Python alike). It names the control characters only: JSON
# Schema regex engines match Unicode scalar values, which a lone surrogate is not, so none can be named there.
TEXT_CHAR = f"[^{_CONTROL}]"
TEXT_PATTERN = f"^{TEXT_CHAR}*$"


def unsafe_char(text: str) -> str | None:
    """Why `text` is refused (its first control character or surrogate), or None."""
    m = _UNSAFE.search(text)
    return None if m is None else f"control character U+{ord(m.group()):04X} at position {m.start()} is not allowed"


def has_control(text: str) -> bool:
    """True if `text` breaks the text rule (see `unsafe_char`)."""
    return _UNSAFE.search(text) is not None


def printable(text: Any, limit: int = MAX_TEXT) -> str:
    """`text` as a bounded, single-line string without control characters (for errors and reasons)."""
    out = _UNSAFE.sub(" ", str(text))
    return " ".join(out.split())[:limit]


def _no_control(value: str) -> str:
    if reason := unsafe_char(value):
        raise ValueError(reason)
    return value


class _DocumentedTextRule:
    """Puts TEXT_PATTERN in the JSON Schema of a `Text` (validation stays `unsafe_char`'s, which also refuses
    surrogates and says where)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.setdefault("pattern", TEXT_PATTERN)
        return schema


Text = Annotated[str, AfterValidator(_no_control), _DocumentedTextRule()]
# The same rule for an object's keys: pydantic would turn a key's pattern into `patternProperties`, which admits
# other keys instead of refusing them, so a key's schema keeps its lengths only.
TextKey = Annotated[str, AfterValidator(_no_control)]


class FieldError(ValueError):
    """Input that cannot be used: `field` names where (a request path such as "params.num_leaves" or
    "variants[1].weight"), `reason` says why in words a user can act on. The API answers 422 naming the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# ---- subjects ---------------------------------------------------------------------------------
def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_subject(aggregate: str, event: str) -> str:
    return f"{SUBJECT_PREFIX}.{aggregate}.{event}"


def dlq_subject(original: str) -> str:
    return f"{DLQ_PREFIX}." + original.removeprefix(f"{SUBJECT_PREFIX}.").removeprefix("trainyard.")


GPU_ROUTE = "gpu"  # the capability token of work that needs a GPU: `trainyard.work.<priority>.gpu.<kind>.<id>`


def work_subject(priority: str, kind: str, aggregate_id: UUID | str, gpu: bool = False) -> str:
    """Where a work item goes: `trainyard.work.<priority>.<kind>.<id>`, or with `gpu` one level deeper,
    `trainyard.work.<priority>.gpu.<kind>.<id>`, which only GPU runners' consumers filter."""
    route = f"{GPU_ROUTE}.{kind}" if gpu else kind
    return f"{WORK_PREFIX}.{priority}.{route}.{aggregate_id}"


def work_filter(priority: str, kind: str = "*", gpu: bool = False) -> str:
    return f"{WORK_PREFIX}.{priority}.{GPU_ROUTE}.{kind}.>" if gpu else f"{WORK_PREFIX}.{priority}.{kind}.>"


# ---- the event envelope -------------------------------------------------------------------------
def event_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid5(_EVENT_NAMESPACE, f"{aggregate_id}:{version}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def envelope(domain_event: Any, aggregate: str | None = None) -> tuple[str, dict[str, Any]]:
    """(subject, JSON-ready envelope) of an eventsourcing domain event. `aggregate` defaults to the snake case
    of the event's aggregate class; the metadata the application attached at save time (who and why) is lifted
    into the envelope. An event with `published_as()` names its own public event and payload (a deployment's
    revisions all publish as `revised`)."""
    owner, name = type(domain_event).__qualname__.split(".")[-2:]
    aggregate, name = aggregate or snake(owner), snake(name)
    if hasattr(domain_event, "published_as"):  # an event that keeps an older public name and fields
        name, fields = domain_event.published_as()
    else:
        fields = {k: v for k, v in domain_event.__dict__.items() if k not in _ENVELOPE_KEYS}
    payload = {k: _jsonable(v) for k, v in fields.items()}
    meta = getattr(domain_event, "metadata", None) or {}
    body = {
        "event_id": str(event_id(domain_event.originator_id, domain_event.originator_version)),
        "aggregate": aggregate,
        "aggregate_id": str(domain_event.originator_id),
        "aggregate_version": domain_event.originator_version,
        "occurred_at": domain_event.timestamp.isoformat(),
        "type": f"{aggregate}.{name}",
        **{k: meta.get(k) for k in METADATA_KEYS},
        "payload": payload,
    }
    body["actor"] = body["actor"] or "anonymous"
    body["project"] = meta.get("project") or DEFAULT_PROJECT  # subscribers filter on it (docs/events.md)
    return event_subject(aggregate, name), body


# ---- work items ---------------------------------------------------------------------------------
class WorkItem(BaseModel):
    """"`aggregate_id` has work of `kind`": published by the relay when an event puts the aggregate in the queue.
    Duplicates are harmless: the claim is decided by the aggregate, which refuses a second live lease."""

    model_config = ConfigDict(extra="forbid")
    kind: WorkKind
    aggregate_id: UUID
    priority: Priority
    work_id: str = Field(min_length=1, max_length=100, description="the event id that asked for the work")
    resume_of: UUID | None = Field(default=None, description="a retry with from_checkpoint: the job whose latest "
                                                             "checkpoint it starts from")


def lease_id_of(token: str) -> str:
    """The public id of a lease: a runner proves it holds the lease with the token, which never leaves it and
    the command handler; events and read models carry only this digest."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


# ---- runner reports -----------------------------------------------------------------------------
Metrics = Annotated[dict[Annotated[TextKey, Field(min_length=1, max_length=100)], float], Field(max_length=100)]


def _finite_metrics(values: dict[str, float]) -> dict[str, float]:
    for name, v in values.items():
        if not math.isfinite(v):
            raise ValueError(f"final metric {name!r} is not a finite number")
    return values


NameList = Annotated[list[Annotated[Text, Field(max_length=200)]], Field(max_length=5000)]


class RecipeColumn(TypedDict, total=False):
    name: Required[Annotated[Text, Field(max_length=200)]]
    type: Required[Literal["number", "boolean", "category"]]
    levels: Annotated[list[Annotated[Text, Field(max_length=200)]], Field(max_length=256)]


class ImageInputJson(TypedDict):
    """An image model's input (domain/images.py `ImageInput.to_json`)."""
    height: Annotated[int, Field(ge=1, le=4096)]
    width: Annotated[int, Field(ge=1, le=4096)]
    channels: Literal[1, 3]
    pixel_max: Annotated[float, Field(gt=0, le=65535)]
    layout: Literal["chw"]
    resample: Literal["bilinear"]


class FeatureRecipeJson(TypedDict, total=False):
    """A model's feature recipe as a runner reports it (domain/features.py `FeatureRecipe.to_json`)."""
    columns: Required[Annotated[list[RecipeColumn], Field(max_length=10_000)]]
    ignored: NameList
    unseen_category: Literal["zeros"]
    image: ImageInputJson


ArtifactValue = Annotated[Text, Field(max_length=4096)] | int | NameList | FeatureRecipeJson


EVALUATION_ARTIFACT = "evaluation.json"  # the artifact a built-in trainer's job keeps its evaluation report as
MAX_JOB_ARTIFACTS = 100  # files a code job may keep with `run.log_artifact` (runners/code_task.py)


class NamedArtifact(BaseModel):
    """A file a code job kept (`run.log_artifact(path, name)`), stored beside its model."""

    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=200)
    uri: Text = Field(min_length=1, max_length=4096)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0, le=2**62)


class RunnerCapabilities(BaseModel):
    """What a runner has (runners/capabilities.py: measured on its machine, overridable by settings). Sent as a
    `claim`'s `capacity` (a job bigger than it is refused before anything is recorded) and every few seconds on
    `trainyard.rpc.runner.hello` (the service keeps the runners it has seen: infra/runner_registry.py)."""

    model_config = ConfigDict(extra="forbid")
    runner_id: Text = Field(default="", max_length=200)
    cpus: int = Field(ge=1, le=1_000_000)
    memory_mb: int = Field(ge=1, le=2**40)
    gpus: int = Field(default=0, ge=0, le=1024)
    gpu_model: Text | None = Field(default=None, max_length=200)
    accepts_code: bool = True


class RunnerReport(BaseModel):
    """What a runner tells the command handlers about one job.

    `claim` asks for the job with a fresh lease token (retrying a claim with the same token is safe);
    `heartbeat` keeps the lease and carries progress (no event: a row update); `completed`, `failed`,
    `cancelled` end the attempt; `release` hands the job back unharmed (a graceful stop spends no attempt);
    `check` asks the aggregate whether to stop (after a cancel event was seen on the bus); `intermediate` reports
    a study trial's objective at `current_step` (`value`) and the reply says whether to stop (pruned). A claim's
    `resumed_from_step` is the step of the checkpoint the runner will start from (the attempt's Started records it).
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["claim", "heartbeat", "check", "intermediate", "completed", "failed", "cancelled", "release"]
    job_id: UUID
    lease: str = Field(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    runner_id: Text = Field(min_length=1, max_length=200)
    report_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    correlation_id: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
    trace_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    current_step: int | None = Field(default=None, ge=0, le=2**62)
    total_steps: int | None = Field(default=None, ge=1, le=2**62)
    resumed_from_step: int | None = Field(default=None, ge=0, le=2**62)
    value: float | None = Field(default=None, allow_inf_nan=False, description="intermediate: the objective's value")
    final_metrics: Annotated[Metrics, AfterValidator(_finite_metrics)] = Field(default_factory=dict)
    artifact: dict[Annotated[str, Field(max_length=64)], ArtifactValue] | None = (
        Field(default=None, max_length=16, description="where the result is, and what a reader of it needs "
                                                       "(feature names, class labels and feature recipe of a model)"))
    artifacts: list[NamedArtifact] | None = Field(default=None, max_length=MAX_JOB_ARTIFACTS,
                                                  description="completed: the files a code job kept")
    error: str | None = Field(default=None, max_length=20_000)
    capacity: RunnerCapabilities | None = Field(default=None, description="claim: what the runner has (a job "
                                                "needing more is refused with code `unfit`, nothing recorded)")


class ReportReply(BaseModel):
    ok: bool
    status: str | None = None
    attempt: int | None = None
    cancel_requested: bool = False
    error: str | None = None
    code: str | None = None  # finished | stale_lease | lease_held | not_found | invalid | error | wait (quota) | unfit
    job: dict[str, Any] | None = None  # claim: what the runner needs to run it (spec, attempt, correlation)


# ---- telemetry ---------------------------------------------------------------------------------
MAX_BATCH_POINTS = 50_000
MetricName = Annotated[TextKey, Field(min_length=1, max_length=200)]  # a key of `series`
Step = Annotated[int, Field(ge=0, le=2**63 - 1)]
EpochMs = Annotated[int, Field(ge=0, le=2**53)]


def _packed(dtype: str, low: int | None = None, high: int | None = None) -> Any:
    """A SeriesChunk column sent packed: the base64 of its values as little-endian `dtype`, checked to lie within
    low..high when given; validated into a read-only numpy array."""
    kind = np.dtype(dtype).newbyteorder("<")

    def unpack(text: str) -> np.ndarray:
        try:
            raw = pybase64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("a packed column must be base64") from None
        if len(raw) % kind.itemsize:
            raise ValueError(f"a packed column holds {kind.itemsize}-byte values; {len(raw)} bytes is not a whole number")
        values = np.frombuffer(raw, kind)
        if low is not None and len(values) and not (low <= values.min() and values.max() <= high):
            raise ValueError(f"values must lie within {low}..{high}")
        return values

    return Annotated[str, Field(max_length=-(-MAX_BATCH_POINTS * kind.itemsize // 3) * 4,
                                description=f"packed: base64 of little-endian {dtype} values"),
                     AfterValidator(unpack)]


def _base64(values: np.ndarray) -> str:
    return pybase64.b64encode(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()).decode()


PackedSteps = _packed("uint64", 0, 2**63 - 1)
PackedValues = _packed("float64")
PackedMs = _packed("int64", 0, 2**53)


class SeriesChunk(BaseModel):
    """Points of one metric: `steps[i]`, `values[i]` and `ts_ms[i]` (Unix epoch milliseconds, UTC) go together.
    Each column is a JSON array, or packed: a base64 string of the values as little-endian uint64 (steps), float64
    (values) and int64 (ts_ms), what runners send (a fraction of the bytes, and no number to parse one by one).
    In arrays, non-finite values travel as the strings "NaN", "Infinity" and "-Infinity". Validated packed columns
    are numpy arrays, and a chunk holding arrays is sent packed."""

    model_config = ConfigDict(ser_json_inf_nan="strings")
    steps: list[Step] | PackedSteps
    values: list[float] | PackedValues
    ts_ms: list[EpochMs] | PackedMs

    @classmethod
    def packed(cls, steps: Any, values: Any, ts_ms: Any) -> SeriesChunk:
        """A chunk of these columns (sequences or arrays) that travels packed, checked as a received one is."""
        return cls(steps=_base64(np.asarray(steps, "<u8")), values=_base64(np.asarray(values, "<f8")),
                   ts_ms=_base64(np.asarray(ts_ms, "<i8")))

    @field_serializer("steps", "values", "ts_ms", when_used="json")
    def _pack(self, column: Any) -> Any:
        return _base64(column) if isinstance(column, np.ndarray) else column

    @model_validator(mode="after")
    def _same_lengths(self) -> SeriesChunk:
        if not len(self.steps) == len(self.values) == len(self.ts_ms):
            raise ValueError("steps, values and ts_ms must have the same length")
        return self


class MetricBatch(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    batch_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    job_id: UUID
    attempt: int = Field(ge=1, le=2**31 - 1)
    runner_id: Text = Field(min_length=1, max_length=200)
    series: dict[MetricName, SeriesChunk] = Field(max_length=1000)

    @model_validator(mode="after")
    def _bounded(self) -> MetricBatch:
        if self.size > MAX_BATCH_POINTS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_POINTS} points, this one {self.size}")
        return self

    @property
    def size(self) -> int:
        return sum(len(c.steps) for c in self.series.values())


# ---- training logs ------------------------------------------------------------------------------
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}  # Python logging's numbers
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogStream = Literal["stdout", "stderr", "logging"]
MAX_LOG_MESSAGE = 16_384  # characters of one line, a truncation marker included
MAX_BATCH_LINES = 1000
# Characters of all messages of a batch: at most 4 UTF-8 bytes each, so a full batch stays near 0.5 MB of JSON,
# well under NATS's 1 MB default max payload.
MAX_BATCH_LOG_CHARS = 131_072
# A log line may hold a tab; any other control character (NUL, ESC, a newline: one line is one message) or a lone
# surrogate is refused.
_LOG_UNSAFE = re.compile(f"[\u0000-\u0008\u000a-\u001f\u007f-\u009f{_SURROGATE}]")


def _log_text(value: str) -> str:
    if m := _LOG_UNSAFE.search(value):
        raise ValueError(f"control character U+{ord(m.group()):04X} at position {m.start()} is not allowed")
    return value


class LogLine(BaseModel):
    """One line a job printed or logged: `seq` is its identity within the attempt (increasing in the order the
    runner captured the lines), `ts_ms` when (Unix epoch milliseconds, UTC), `stream` where it came from (the
    process's stdout or stderr, or Python's logging and warnings in the training thread)."""

    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=2**63 - 1)
    ts_ms: EpochMs
    level: LogLevel
    stream: LogStream
    message: Annotated[str, AfterValidator(_log_text)] = Field(
        max_length=MAX_LOG_MESSAGE, json_schema_extra={"pattern": "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f]*$"})


class LogBatch(BaseModel):
    """Log lines of one attempt of a job, from the runner that ran it."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    job_id: UUID
    attempt: int = Field(ge=1, le=2**31 - 1)
    runner_id: Text = Field(min_length=1, max_length=200)
    lines: list[LogLine] = Field(max_length=MAX_BATCH_LINES)

    @model_validator(mode="after")
    def _bounded(self) -> LogBatch:
        chars = sum(len(line.message) for line in self.lines)
        if chars > MAX_BATCH_LOG_CHARS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_LOG_CHARS} characters of messages, this one {chars}")
        return self

    @property
    def size(self) -> int:
        return len(self.lines)


# ---- prediction telemetry (the inference server) ---------------------------------------------------
TELEMETRY_PREDICTIONS = f"{SUBJECT_PREFIX}.telemetry.predictions"
TELEMETRY_FEEDBACK = f"{SUBJECT_PREFIX}.telemetry.feedback"
PREDICTION_OUTPUTS = ("prediction", "value", "probabilities", "classes")
MAX_BATCH_PREDICTIONS = 20_000
ShortText = Annotated[Text, Field(max_length=200)]


class PredictionBatch(BaseModel):
    """Prediction records of one inference server as columns (index i of every list is record i): what was asked
    of which deployment revision and variant, how it went (HTTP status) and how long it took (microseconds, in
    the server). `shadow` records are the shadow variant's copies (never returned to the caller)."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    server_id: ShortText
    ts_ms: list[EpochMs]
    request_id: list[Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9._:-]*$")]]
    deployment: list[ShortText]
    revision: list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
    variant: list[ShortText]
    model: list[ShortText]
    version: list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
    status: list[Annotated[int, Field(ge=100, le=599)]]
    latency_us: list[Annotated[int, Field(ge=0, le=2**32 - 1)]]
    n_rows: list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
    shadow: list[bool]
    # What the first row of each request was answered (the row feedback refers to): the predicted class label
    # ("" for regression or an error), the value (regression; null otherwise), the class probabilities and labels.
    prediction: list[ShortText] = Field(default_factory=list)
    value: list[Annotated[float, Field(allow_inf_nan=False)] | None] = Field(default_factory=list)
    probabilities: list[Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(max_length=256)]] = Field(
        default_factory=list)
    classes: list[Annotated[list[ShortText], Field(max_length=256)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _columns(self) -> PredictionBatch:
        n = len(self.ts_ms)
        if n > MAX_BATCH_PREDICTIONS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_PREDICTIONS} records, this one {n}")
        columns = ("request_id", "deployment", "revision", "variant", "model", "version", "status", "latency_us",
                   "n_rows", "shadow")
        if any(len(getattr(self, c)) != n for c in columns):
            raise ValueError("every column must have as many entries as ts_ms")
        if any(len(getattr(self, c)) not in (0, n) for c in PREDICTION_OUTPUTS):
            raise ValueError("prediction, value, probabilities and classes: none, or one entry per record")
        return self

    @property
    def size(self) -> int:
        return len(self.ts_ms)


MAX_FEEDBACK = 10_000
RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class FeedbackBatch(BaseModel):
    """Ground truth for earlier predictions of one deployment, as columns: `label` (classification, as the
    predictions return it; "" when a value is given) or `value` (regression; null when a label is given). A repeated
    request id replaces the earlier feedback (the latest `ts_ms` wins)."""

    model_config = ConfigDict(extra="forbid")
    batch_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    deployment: ShortText
    request_id: list[RequestId]
    label: list[ShortText]
    value: list[Annotated[float, Field(allow_inf_nan=False)] | None]
    ts_ms: list[EpochMs]

    @model_validator(mode="after")
    def _columns(self) -> FeedbackBatch:
        n = len(self.request_id)
        if n > MAX_FEEDBACK:
            raise ValueError(f"a batch holds at most {MAX_FEEDBACK} items, this one {n}")
        if not len(self.label) == len(self.value) == len(self.ts_ms) == n:
            raise ValueError("every column must have as many entries as request_id")
        return self

    @property
    def size(self) -> int:
        return len(self.request_id)
