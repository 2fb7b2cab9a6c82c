"""Where trained models are kept: a small store interface and its local-filesystem backend.

A model is stored once per job attempt; the `Artifact` (uri, sha256, size) is what the job's
Completed event records, so a reader can check what it fetched against the digest. The other files a code
job keeps (`run.log_artifact`) are stored beside its model, one per content (`put_file`).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Protocol
from urllib.parse import unquote, urlparse

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class Artifact:
    uri: str
    sha256: str  # hex digest of the stored bytes
    size_bytes: int


class ArtifactStore(Protocol):
    """Stores model bytes per (job, attempt).

    `put` is atomic and idempotent: readers see either no artifact or the whole of it, and putting
    the same attempt again replaces it (a redelivered attempt rewrites its own model). Safe to call
    from several threads and processes for different (job, attempt) pairs.
    """

    def put(self, job_id: str, attempt: int, data: bytes, suffix: str) -> Artifact:
        """Store `data` as the model of `job_id`'s `attempt`, with file suffix `suffix` ("txt", "pt")."""

    def get(self, uri: str) -> bytes:
        """The bytes stored under `uri`; FileNotFoundError if there are none."""

    def put_file(self, job_id: str, attempt: int, source: Path) -> Artifact:
        """Store the file at `source` (streamed, not read whole) beside `job_id`'s `attempt` model: one stored copy
        per content, so putting the same bytes twice stores them once."""


class LocalArtifactStore:
    """Artifacts as files `<root>/<job_id>/attempt-<n>/model.<suffix>`, uri `file:///abs/path`.

    Writes go to a temporary file in the target folder, are fsynced, then renamed into place.
    `get` only reads files under `root`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def put(self, job_id: str, attempt: int, data: bytes, suffix: str) -> Artifact:
        if not _SAFE_NAME.fullmatch(str(job_id)) or ".." in str(job_id):
            raise ValueError(f"job_id {job_id!r} is not a safe file name")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
        if not _SAFE_NAME.fullmatch(suffix) or ".." in suffix:
            raise ValueError(f"suffix {suffix!r} is not a safe file suffix")
        folder = self.root / str(job_id) / f"attempt-{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"model.{suffix}"
        write_atomically(path, data)
        return Artifact(uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    def get(self, uri: str) -> bytes:
        return self.path_of(uri).read_bytes()

    def path_of(self, uri: str) -> Path:
        """The file of `uri`: ValueError for a uri that is not a local one under `root`."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local artifact uri: {uri!r}")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{uri!r} is outside the artifact root {self.root}")
        return path

    def put_file(self, job_id: str, attempt: int, source: Path) -> Artifact:
        folder = self._folder(job_id, attempt) / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".artifact-", suffix=".tmp")
        try:
            with open(source, "rb") as src, os.fdopen(fd, "wb") as handle:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            path = folder / digest.hexdigest()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        return Artifact(uri=path.as_uri(), sha256=digest.hexdigest(), size_bytes=size)

    def _folder(self, job_id: str, attempt: int) -> Path:
        if not _SAFE_NAME.fullmatch(str(job_id)) or ".." in str(job_id):
            raise ValueError(f"job_id {job_id!r} is not a safe file name")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
        return self.root / str(job_id) / f"attempt-{attempt}"


def write_atomically(path: Path, data: bytes, before: Callable[[], None] | None = None) -> None:
    """Write `data` to `path` so that readers see all of it or none (a temporary file in its folder, fsync'd, then
    renamed over it, and the folder fsync'd); `before()` runs just before the rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before is not None:
            before()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
