"""Datasets: the `dataset` of a job or study, the answer to an upload and the list of uploads."""
from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from api.limits import SafeText
from api.schemas.common import NO_CONTROL
from domain.contract import TEXT_CHAR
from infra.dataset_files import FILE_SUFFIXES
from infra.datasets import BUILTIN_TASK

# The URIs infra/datasets.py reads: a builtin by name, or an absolute file:// path with a table's suffix (any case).
# Whether the file is there, inside a dataset root and readable is only known when it is read.
_SUFFIXES = "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in suffix)
                     for suffix in FILE_SUFFIXES)
URI_PATTERN = f"^(builtin://({'|'.join(map(re.escape, BUILTIN_TASK))})|file:///{TEXT_CHAR}*({_SUFFIXES}))$"


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: SafeText = Field(min_length=1, max_length=2048, json_schema_extra={"pattern": URI_PATTERN},
                          description=" | ".join(f"builtin://{name} ({task})" for name, task in BUILTIN_TASK.items())
                          + " | file:///abs/path.csv|.parquet inside a dataset root (see POST /api/v1/datasets); "
                          f"at most 2048 characters, {NO_CONTROL}")
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


class DatasetPublic(DatasetUploaded):
    name: str = Field(description="the stored file's name: `<sha256[:16]>-<name>`")
    uploaded_at: datetime = Field(description="when the file was stored (its modification time)")


class DatasetList(BaseModel):
    items: list[DatasetPublic] = Field(description="the uploads under the first dataset root, newest first")
