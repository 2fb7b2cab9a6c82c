"""Datasets: the `dataset` of a job or study, the answer to an upload and the list of uploads."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import SafeText
from api.schemas.common import NO_CONTROL
from domain.contract import TEXT_CHAR
from infra.dataset_files import FILE_SUFFIXES, IMAGE_ARCHIVE_SUFFIXES
from infra.datasets import BUILTIN_TASK

# The URIs infra/datasets.py reads: a builtin by name, or an absolute file:// path with a table's suffix (any case).
# Whether the file is there, inside a dataset root and readable is only known when it is read.
_SUFFIXES = "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in suffix)
                     for suffix in FILE_SUFFIXES + IMAGE_ARCHIVE_SUFFIXES)
URI_PATTERN = f"^(builtin://({'|'.join(map(re.escape, BUILTIN_TASK))})|file:///{TEXT_CHAR}*({_SUFFIXES}))$"


class ForecastIn(BaseModel):
    """Task `forecasting`: how the table's series become features (infra/forecasting.py)."""
    model_config = ConfigDict(extra="forbid")
    time_column: SafeText | None = Field(default=None, min_length=1, max_length=256,
                                         description="the column that orders time (numbers, or dates as text); "
                                                     "required for a file (builtin://demand: `date`)")
    series_column: SafeText | None = Field(default=None, min_length=1, max_length=256,
                                           description="one series per distinct value (at most 10,000); none: one "
                                                       "series (builtin://demand: `store`)")
    horizon: StrictInt = Field(default=7, ge=1, le=366, description="steps forecast ahead, recursively; the last "
                                                                   "horizon rows of each series test, the horizon "
                                                                   "before them validate")
    lags: list[Annotated[StrictInt, Field(ge=1, le=1000)]] = Field(
        default=[1, 2, 3, 7, 14, 28], min_length=1, max_length=32, description="features y[t-k], 1 to 32 of them")
    rolling: list[Annotated[StrictInt, Field(ge=2, le=1000)]] = Field(
        default=[7, 28], max_length=8, description="features: the mean of the w values before t, at most 8")
    season: StrictInt = Field(default=7, ge=1, le=1000, description="the seasonal-naive baseline's period "
                                                                    "(builtin://demand: 7)")


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: SafeText = Field(min_length=1, max_length=2048, json_schema_extra={"pattern": URI_PATTERN},
                          description=" | ".join(f"builtin://{name} ({task})" for name, task in BUILTIN_TASK.items())
                          + " | file:///abs/path.csv|.parquet inside a dataset root (see POST /api/v1/datasets) | "
                          "file:///abs/path.zip|.tar.gz, an ImageFolder archive (task image_classification); "
                          f"at most 2048 characters, {NO_CONTROL}")
    target: SafeText | None = Field(default=None, min_length=1, max_length=256,
                                    description="target column; required for file:// tables (images: none, the "
                                                "class folder is the label); at most 256 characters, "
                                                f"{NO_CONTROL}")
    forecast: ForecastIn | None = Field(default=None, description="task forecasting only (and then required, but "
                                        "for builtin://demand): the time and series columns, horizon, lags, "
                                        "rolling windows and season")


class DatasetUploaded(BaseModel):
    uri: str = Field(description="file:// URI of the stored file, to use as a job's dataset.uri")
    sha256: str
    size_bytes: int
    rows: int = Field(description="a table's rows; an image archive's images")
    columns: int
    column_names: list[str]
    classes: list[str] | None = Field(default=None, description="an image archive's class folders (null for a table)")


class DatasetPublic(DatasetUploaded):
    name: str = Field(description="the stored file's name: `<sha256[:16]>-<name>`")
    uploaded_at: datetime = Field(description="when the file was stored (its modification time)")


class DatasetList(BaseModel):
    items: list[DatasetPublic] = Field(description="the uploads under the first dataset root, newest first")
