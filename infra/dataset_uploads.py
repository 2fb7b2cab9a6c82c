"""Storing an uploaded dataset file under the first dataset root, content-addressed and checked, per project.

Each project has its own upload folder (`upload_dir`): `<root>/uploads/` for the default project (where every
upload made before projects already is), `<root>/uploads/<project>/` for any other (`domain.contract.scoped`; a
project's folder sits inside the default one's, whose listing skips folders).
`store_upload(source, filename, name, root, max_bytes, project=…)` copies `source` (a binary file object, read in
chunks, never whole) to a temporary file in the project's folder, hashing and counting as it goes, reads it back
as a table in bounded batches (it must parse, have at least MIN_ROWS rows and 2 columns, and be within the table
budget, infra/dataset_files.py's `scan_table`), then renames it atomically to
`<folder>/<sha256[:16]>-<sanitized name>`. On any failure the temporary file is
removed. Errors: `UploadTooLarge` (over `max_bytes`), `DatasetError("file", reason)` for a file that is not a
usable .csv/.parquet table. What it learned (sha256, size, rows, columns) is kept beside the file as
`.<stored name>.json`, so `list_uploads(root, project=…)` finds a project's uploads again without reading or
hashing them; an upload stored before that sidecar existed is read once and gets one. A job or study may use only
its own project's uploads (`check_upload_owner`); files an operator put elsewhere under a dataset root are anyone's.
An ImageFolder archive (.zip, .tar.gz: one folder per class of PNG/JPEG images, for task image_classification) is
stored the same way once every image in it has been checked and decoded (infra/image_folders.py, within
`image_limits`); its `rows` are its images and `classes` its class folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from domain.contract import DEFAULT_PROJECT, scoped
from infra.bundle_members import BundleError
from infra.dataset_files import FILE_SUFFIXES, IMAGE_ARCHIVE_SUFFIXES, DatasetError, scan_table
from infra.datasets import MIN_ROWS
from infra.image_folders import ImageLimits, read_image_folder

CHUNK_BYTES = 1024 * 1024
STORED_SUFFIXES = FILE_SUFFIXES + IMAGE_ARCHIVE_SUFFIXES
MAX_NAME_CHARS = 100


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is over the upload limit of {limit:,} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredDataset:
    path: Path
    sha256: str
    size_bytes: int
    rows: int
    column_names: list[str]
    classes: list[str] | None = None  # an image archive's class folders

    @property
    def uri(self) -> str:
        return self.path.as_uri()


UPLOADS = "uploads"


def upload_dir(root: Path, project: str) -> Path:
    """`project`'s upload folder under the dataset root `root` (resolved): a stored name `n` is at
    `uploads/<scoped(project, n)>`, so the default project's uploads keep the paths they had before projects."""
    return (Path(root).resolve() / UPLOADS / scoped(project, "_")).parent


def upload_owner(path: Path, roots: Sequence[Path]) -> str | None:
    """The project whose upload folder holds `path` (resolved), None for a file outside every upload folder."""
    for root in roots:
        uploads = (Path(root) / UPLOADS).resolve()  # `path` is resolved: so is the folder it is compared with
        if path.is_relative_to(uploads):
            inner = path.relative_to(uploads).parts
            return inner[0] if len(inner) > 1 else DEFAULT_PROJECT
    return None


def check_upload_owner(uri: str, project: str, roots: Sequence[Path]) -> None:
    """DatasetError("dataset.uri") for a `file://` URI inside another project's upload folder, whether that file
    exists or not (the answer depends on the path alone: nothing of the other project is read or revealed). Run
    it before reading the file."""
    if not isinstance(uri, str) or not uri.startswith("file://"):
        return  # builtin datasets are everyone's; other schemes are refused by the dataset check
    try:
        path = Path(unquote(urlparse(uri).path)).resolve()
    except (ValueError, OSError, RuntimeError):
        return  # not a path the dataset check will accept either
    owner = upload_owner(path, roots)
    if owner is not None and owner != project:
        raise DatasetError("dataset.uri", f"{path} is not one of this project's uploads; upload the file with "
                           "POST /api/v1/datasets in this project and use the URI it returns")


def store_upload(source: BinaryIO, filename: str, name: str | None, root: Path, max_bytes: int, *,
                 project: str, image_limits: ImageLimits = ImageLimits()) -> StoredDataset:
    """Store `source` (uploaded as `filename`; `name` overrides the stored name) in `project`'s folder under
    `root`; see the module."""
    suffix = next((s for s in STORED_SUFFIXES if filename.lower().endswith(s)), "")
    if not suffix:
        raise DatasetError("file", "the file name must end with .csv or .parquet (a table), or .zip or .tar.gz (an "
                                   "ImageFolder archive of images)")
    folder = upload_dir(root, project)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=suffix)
    tmp = Path(tmp_name)
    try:
        digest, size = _copy(source, fd, max_bytes)
        if suffix in IMAGE_ARCHIVE_SUFFIXES:
            stored = _store_images(tmp, folder / f"{digest[:16]}-{_safe_name(name or filename, suffix)}", digest,
                                   size, image_limits)
            os.replace(tmp, stored.path)
            return stored
        try:  # checked in bounded batches, never held whole (infra/dataset_files.py)
            shape = scan_table(tmp, _safe_name(name or filename, suffix), field="file")
        except DatasetError as e:
            raise DatasetError("file", e.reason) from None
        if shape.rows < MIN_ROWS or len(shape.columns) < 2:
            raise DatasetError("file", f"needs at least {MIN_ROWS} rows and 2 columns, found {shape.rows} rows "
                               f"and {len(shape.columns)} columns")
        final = folder / f"{digest[:16]}-{_safe_name(name or filename, suffix)}"
        stored = StoredDataset(final, digest, size, shape.rows, [str(c) for c in shape.columns])
        _write_sidecar(stored)  # before the rename: a listed upload always has its figures
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stored


def _store_images(tmp: Path, final: Path, digest: str, size: int, limits: ImageLimits) -> StoredDataset:
    """The upload at `tmp` checked as an ImageFolder archive, its sidecar written for `final`."""
    try:
        folder = read_image_folder(tmp, limits, keep=False)
    except BundleError as e:
        raise DatasetError("file", e.reason) from None
    if len(folder.classes) < 2 or len(folder.paths) < MIN_ROWS:
        raise DatasetError("file", f"needs at least 2 class folders and {MIN_ROWS} images, found "
                           f"{len(folder.classes)} and {len(folder.paths)}")
    stored = StoredDataset(final, digest, size, len(folder.paths), [], folder.classes)
    _write_sidecar(stored)
    return stored


def list_uploads(root: Path, *, project: str) -> list[StoredDataset]:
    """`project`'s uploads stored under `root`, newest first (by the file's modification time). Only the files
    of its own folder: the default project's folder holds the other projects' folders, never listed."""
    folder = upload_dir(root, project)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir()
             if not p.name.startswith(".") and p.name.lower().endswith(STORED_SUFFIXES) and p.is_file()]
    out = []
    for path in sorted(files, key=lambda p: (-p.stat().st_mtime, p.name)):
        stored = _read_sidecar(path) or _describe(path)
        if stored is not None:
            out.append(stored)
    return out


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.json")


def _write_sidecar(stored: StoredDataset) -> None:
    tmp = _sidecar(stored.path).with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": stored.sha256, "size_bytes": stored.size_bytes, "rows": stored.rows,
                               "column_names": stored.column_names,
                               **({"classes": stored.classes} if stored.classes is not None else {})}))
    os.replace(tmp, _sidecar(stored.path))


def _read_sidecar(path: Path) -> StoredDataset | None:
    try:
        meta = json.loads(_sidecar(path).read_text())
        classes = meta.get("classes")
        return StoredDataset(path, str(meta["sha256"]), int(meta["size_bytes"]), int(meta["rows"]),
                             [str(c) for c in meta["column_names"]],
                             [str(c) for c in classes] if isinstance(classes, list) else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe(path: Path) -> StoredDataset | None:
    """Read and hash an upload that has no sidecar yet, and write one; None if it is not a readable table."""
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                size += len(chunk)
                digest.update(chunk)
        shape = scan_table(path, path.name, field="file")
    except (OSError, DatasetError):
        return None
    stored = StoredDataset(path, digest.hexdigest(), size, shape.rows, [str(c) for c in shape.columns])
    try:
        _write_sidecar(stored)
    except OSError:
        pass  # a read-only root: it is described again next time
    return stored


def _copy(source: BinaryIO, fd: int, max_bytes: int) -> tuple[str, int]:
    """Copy `source` into the open file `fd` (closed after), returning (sha256 hex, size); UploadTooLarge."""
    digest, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(max_bytes)
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _safe_name(name: str, suffix: str) -> str:
    """`name`'s last path segment reduced to [A-Za-z0-9._-], without a leading dot, ending with `suffix`."""
    stem = PurePosixPath(name.replace("\\", "/")).name
    known = next((s for s in STORED_SUFFIXES if stem.lower().endswith(s)), "")
    stem = stem[:len(stem) - len(known)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:MAX_NAME_CHARS] or "dataset"
    return f"{stem}{suffix}"
