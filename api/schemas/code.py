"""Code bundles: the answer to an upload and the list of a project's bundles."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

CODE_ID_PATTERN = r"^[0-9a-f]{32}$"


class CodeBundlePublic(BaseModel):
    code_id: str = Field(pattern=CODE_ID_PATTERN, description="the first 32 hex digits of the bundle's sha256: the "
                                                              "same bytes are the same bundle")
    sha256: str = Field(description="sha256 of the archive as uploaded")
    files: int = Field(description="files in the bundle (regular files and links; folders not counted)")
    size_bytes: int = Field(description="the archive's size")
    unpacked_bytes: int = Field(description="the files' bytes once unpacked")
    format: Literal["tar.gz", "zip"] = Field(description="read from the content, not the file's name")
    entrypoints: list[str] = Field(description="the .py files at the bundle's top level, sorted")
    filename: str = Field(description="the name it was first uploaded under (or the form's `name`)")
    created_at: datetime = Field(description="when these bytes were first stored in this project")


class CodeBundleList(BaseModel):
    items: list[CodeBundlePublic] = Field(description="the project's bundles, newest first")
