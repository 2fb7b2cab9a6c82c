"""/api/v1/datasets: upload a CSV or Parquet file, or an ImageFolder archive of images, to train on, and list the uploads.

The multipart body is parsed by Starlette (files spool to disk past 1 MiB, never whole in memory) and the
whole request is capped by api/limits.py's BodyLimit (`max_upload_bytes` plus the multipart framing); the file
is then stored by infra/dataset_uploads.py under the first dataset root, with its own cap of `max_upload_bytes`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from api.auth import access_of, allow
from api.quotas import admit_upload, quotas_of
from api.deps import ServicesDep
from api.limits import SafeText
from api.problems import Problem
from api.schemas.common import problems
from api.schemas.datasets import DatasetList, DatasetPublic, DatasetUploaded
from infra.dataset_files import DatasetError
from infra.dataset_uploads import UploadTooLarge, list_uploads, store_upload

PATH = "/api/v1/datasets"
router = APIRouter(prefix=PATH, tags=["datasets"])


@router.post("", dependencies=[allow("dataset.upload")], status_code=201, response_model=DatasetUploaded, responses=problems(400, 413, 422, 429))
def upload_dataset(
    request: Request,
    s: ServicesDep,
    file: Annotated[UploadFile, File(description="a .csv (with a header) or .parquet table: at least 10 rows and "
                                                 "2 columns, at most 256 MiB (Settings.max_upload_bytes), "
                                                 "10,000 feature columns and 200,000,000 cells; or a .zip or "
                                                 ".tar.gz ImageFolder archive (one folder per class of PNG/JPEG "
                                                 "images: at most 50,000 images of 4096 x 4096 pixels, 512 MiB "
                                                 "decoded)")],
    name: Annotated[SafeText | None, Form(min_length=1, max_length=100,
                                          description="name to store it under (default: the file's name); "
                                                      "reduced to letters, digits, '.', '_' and '-'")] = None,
) -> JSONResponse:
    """Store the file in the project's upload folder under the first dataset root as `<sha256[:16]>-<name>` and
    return its `file://` URI, to use as a `dataset.uri` of this project's jobs and studies (another project's are
    refused). Uploading the same bytes under the same name again returns the same URI."""
    project = access_of(request).project
    if "upload_bytes" in quotas_of(s, project):
        used = sum(d.size_bytes for d in list_uploads(s.settings.dataset_root_paths[0], project=project))
        admit_upload(s, project, used, file.size or 0)
    try:
        stored = store_upload(file.file, file.filename or "", name, s.settings.dataset_root_paths[0],
                              s.settings.max_upload_bytes, project=project)
    except UploadTooLarge as e:
        raise Problem(413, "Payload too large", str(e), "file") from None
    except DatasetError as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from None
    out = DatasetUploaded(uri=stored.uri, sha256=stored.sha256, size_bytes=stored.size_bytes, rows=stored.rows,
                          columns=len(stored.column_names), column_names=stored.column_names, classes=stored.classes)
    return JSONResponse(out.model_dump(), status_code=201)


@router.get("", dependencies=[allow("dataset.read")], response_model=DatasetList)
def list_datasets(request: Request, s: ServicesDep) -> DatasetList:
    """The project's uploaded files (under the first dataset root), newest first, with their sha256, rows and
    columns."""
    return DatasetList(items=[DatasetPublic(
        uri=d.uri, sha256=d.sha256, size_bytes=d.size_bytes, rows=d.rows, columns=len(d.column_names),
        column_names=d.column_names, classes=d.classes, name=d.path.name,
        uploaded_at=datetime.fromtimestamp(d.path.stat().st_mtime, timezone.utc))
        for d in list_uploads(s.settings.dataset_root_paths[0], project=access_of(request).project)])
