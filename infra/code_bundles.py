"""Code bundles: a project's training code, uploaded as a .tar.gz or .zip, checked member by member, stored
content-addressed and immutable, per project (the way infra/dataset_uploads.py stores dataset files).

`store_bundle(source, filename, root, project=…, limits=…)` copies `source` (read in chunks, never whole) to a
temporary file in `<root>/<project>/`, hashing and counting as it goes (over `limits.max_bytes`:
`BundleTooLarge`), detects the format from the first bytes (gzip: a tar inside; zip; anything else is refused),
reads every member with infra/bundle_archive.py's checks (data decompressed and counted, never written), then
writes the `<sha256>.json` sidecar and renames the archive atomically to `<root>/<project>/<sha256>.<tar.gz|zip>`.
On any failure the temporary file is removed. Refusals are `BundleError("file", reason)`, the reason naming the
member.

A bundle's `code_id` is the first 32 hex digits of its sha256: anyone holding the bytes can compute it (the client
does, to upload a content once), and the same bytes in two projects are two bundles with the same id, each found
only in its own project's folder. Uploading bytes already stored returns the stored bundle unchanged
(`existed=True`: its first name and time are kept).

`unpack_bundle(stored_path, dest, limits)` unpacks a stored bundle for a runner, with the same checks again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from domain.contract import printable
from infra.bundle_archive import extract_archive, inspect_archive
from infra.bundle_members import FORMATS, BundleError, BundleLimits, detect_format

__all__ = ["BundleError", "BundleLimits", "BundleTooLarge", "StoredBundle", "get_bundle", "list_bundles",
           "store_bundle", "unpack_bundle", "code_id_of"]

CHUNK_BYTES = 1024 * 1024
CODE_ID = re.compile(r"^[0-9a-f]{32}$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # domain/identity.py's names: never "." or ".."
MAX_FILENAME_CHARS = 200


class BundleTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the bundle is over the limit of {limit:,} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredBundle:
    path: Path
    code_id: str
    sha256: str
    files: int
    size_bytes: int
    unpacked_bytes: int
    format: str
    filename: str
    created_at: datetime
    entrypoints: list[str]
    existed: bool = False  # store_bundle found these bytes already stored

    def sidecar(self) -> dict[str, Any]:
        return {"code_id": self.code_id, "sha256": self.sha256, "files": self.files, "size_bytes": self.size_bytes,
                "unpacked_bytes": self.unpacked_bytes, "format": self.format, "filename": self.filename,
                "created_at": self.created_at.isoformat(), "entrypoints": self.entrypoints}


def code_id_of(sha256: str) -> str:
    return sha256[:32]


def project_dir(root: Path, project: str) -> Path:
    if not _PROJECT.match(project):
        raise ValueError(f"not a project name: {project!r}")
    return Path(root).resolve() / project


def store_bundle(source: BinaryIO, filename: str, root: Path, *, project: str, limits: BundleLimits) -> StoredBundle:
    """Check and store `source` (uploaded as `filename`) in `project`'s folder under `root`; see the module."""
    folder = project_dir(root, project)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size, head = _copy(source, fd, limits.max_bytes)
        fmt = detect_format(head)
        if fmt is None:
            raise BundleError("file", "not a .tar.gz or .zip archive (the format is read from the content, "
                              "not the name)")
        if (existing := _read(folder / f"{digest}.json")) is not None and existing.path.is_file():
            tmp.unlink()
            return replace(existing, existed=True)
        contents = inspect_archive(tmp, fmt, limits)
        stored = StoredBundle(folder / f"{digest}.{fmt}", code_id_of(digest), digest, len(contents.files), size,
                              contents.unpacked_bytes, fmt, _safe_filename(filename),
                              datetime.now(timezone.utc), contents.entrypoints)
        _write_json(folder / f"{digest}.json", stored.sidecar())  # first: a stored archive always has its figures
        os.chmod(tmp, 0o644)
        os.replace(tmp, stored.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stored


def list_bundles(root: Path, project: str) -> list[StoredBundle]:
    """`project`'s bundles, newest first."""
    folder = project_dir(root, project)
    if not folder.is_dir():
        return []
    found = [b for p in folder.glob("*.json") if (b := _read(p)) is not None and b.path.is_file()]
    return sorted(found, key=lambda b: (b.created_at, b.code_id), reverse=True)


def get_bundle(root: Path, project: str, code_id: str) -> StoredBundle | None:
    """The bundle `code_id` of `project`; None when it is absent, another project's, or not an id at all."""
    if not isinstance(code_id, str) or not CODE_ID.match(code_id):
        return None
    folder = project_dir(root, project)
    for sidecar in folder.glob(f"{code_id}*.json") if folder.is_dir() else ():
        if (bundle := _read(sidecar)) is not None and bundle.path.is_file():
            return bundle
    return None


def unpack_bundle(stored_path: Path, dest: Path, limits: BundleLimits) -> list[str]:
    """Unpack the stored bundle at `stored_path` into `dest` (made here; it must not exist) with every check of
    the upload again; returns the files written. BundleError, and `dest` is removed, when anything is refused."""
    stored_path = Path(stored_path)
    fmt = next((f for f in FORMATS if stored_path.name.endswith(f".{f}")), None)
    with stored_path.open("rb") as f:
        head = f.read(8)
    if fmt is None or detect_format(head) != fmt:
        raise BundleError("file", f"{stored_path.name} is not a stored .tar.gz or .zip bundle")
    return extract_archive(stored_path, fmt, dest, limits)


def _copy(source: BinaryIO, fd: int, max_bytes: int) -> tuple[str, int, bytes]:
    """Copy `source` into the open file `fd` (closed after): (sha256 hex, size, its first bytes); BundleTooLarge."""
    digest, size, head = hashlib.sha256(), 0, b""
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise BundleTooLarge(max_bytes)
            if len(head) < 8:
                head += chunk[:8 - len(head)]
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size, head


def _safe_filename(name: str) -> str:
    """The upload's last path segment, printable and bounded (kept for people; never used as a path)."""
    return printable(PurePosixPath(name.replace("\\", "/")).name, MAX_FILENAME_CHARS).strip() or "bundle"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read(sidecar: Path) -> StoredBundle | None:
    try:
        meta = json.loads(sidecar.read_text())
        sha, fmt = str(meta["sha256"]), str(meta["format"])
        if fmt not in FORMATS or sidecar.name != f"{sha}.json":
            return None
        return StoredBundle(sidecar.with_name(f"{sha}.{fmt}"), str(meta["code_id"]), sha, int(meta["files"]),
                            int(meta["size_bytes"]), int(meta["unpacked_bytes"]), fmt, str(meta["filename"]),
                            datetime.fromisoformat(meta["created_at"]), [str(e) for e in meta["entrypoints"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None
