"""The model registry: models, versions, aliases and ONNX exports."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from api.limits import SafeText
from api.schemas.common import MAX_TAGS, Tag
from domain.features import COLUMN_TYPES
from domain.models import ALIAS_NAME, MODEL_NAME
from domain.vocabulary import ExportStatus

ModelName = Annotated[str, Field(min_length=1, max_length=100, pattern=MODEL_NAME.pattern,
                                 description="1 to 100 letters, digits, '.', '_' or '-'")]


AliasName = Annotated[str, Field(min_length=1, max_length=64, pattern=ALIAS_NAME.pattern,
                                 description="1 to 64 lowercase letters, digits, '_' or '-', starting with a letter")]


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
    metric_native: float | None = Field(description="null where undefined, or where no labelled rows checked it (a "
                                                    "code job's model exported without a dataset)")
    metric_onnx: float | None
    passed: bool

    @model_validator(mode="before")
    @classmethod
    def _unmeasured(cls, data: Any) -> Any:
        """A validated code model without labelled rows records no metric figures (final metrics are numbers)."""
        if isinstance(data, dict):
            data = {"metric_native": None, "metric_onnx": None, **data}
        return data


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


class InputColumn(BaseModel):
    name: str
    type: Literal[COLUMN_TYPES] = Field(description="number (null: missing), boolean, or category (text)")
    levels: list[str] | None = Field(default=None, description="category: the values seen in training; any other "
                                                               "value, or null, counts as missing (all-zero one-hot)")


class VersionPublic(BaseModel):
    model: str = Field(validation_alias="model_name")
    version: int = Field(validation_alias="number")
    job_id: UUID
    aliases: list[str]
    lineage: dict[str, Any] = Field(description="job id, framework, task, dataset (and its sha256), params, final "
                                                "metrics, artifact (uri, sha256), feature names, class labels")
    inputs: list[InputColumn] | None = Field(
        default=None, description="the raw columns to send as named rows to predict, as the training file had "
                                  "them (null for a version trained before inputs were recorded: send its "
                                  "`lineage.feature_names`)")
    onnx: OnnxArtifact | None = Field(description="the serving artifact: the last export that passed its parity check")
    parity: ParityReport | None
    exports: list[ExportPublic] = Field(default_factory=list)
    created_by: str | None
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _inputs_from_lineage(cls, data: Any) -> Any:
        """The raw input schema is the recipe the job's artifact recorded (lineage.artifact.feature_recipe)."""
        if isinstance(data, dict) and "inputs" not in data:
            artifact = (data.get("lineage") or {}).get("artifact") or {}
            recipe = artifact.get("feature_recipe") if isinstance(artifact, dict) else None
            data = {**data, "inputs": recipe.get("columns") if isinstance(recipe, dict) else None}
        return data


class VersionList(BaseModel):
    items: list[VersionPublic]
