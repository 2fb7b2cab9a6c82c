"""Datasets: the `dataset` of a job or study, and the answer to an upload."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.limits import SafeText
from api.schemas.common import NO_CONTROL


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: SafeText = Field(min_length=1, max_length=2048,
                          description="builtin://breast_cancer | builtin://wine | builtin://diabetes | "
                                      "file:///abs/path.csv|.parquet inside a dataset root (see POST "
                                      f"/api/v1/datasets); at most 2048 characters, {NO_CONTROL}")
    target: SafeText | None = Field(default=None, min_length=1, max_length=256,
                                    description="target column; required for file://; at most 256 characters, "
                                                f"{NO_CONTROL}")


class DatasetUploaded(BaseModel):
    uri: str = Field(description="file:// URI of the stored file, to use as a job's dataset.uri")
    sha256: str
    size_bytes: int
    rows: int
    columns: int
    column_names: list[str]
