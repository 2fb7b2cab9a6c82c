"""/api/v1/code: upload a project's training code as a .tar.gz or .zip bundle, list the bundles, show one.

The multipart body is parsed by Starlette (the file spools to disk past 1 MiB) and the whole request is capped by
api/limits.py's BodyLimit (`max_code_bytes` plus the multipart framing); infra/code_bundles.py then checks every
member of the archive (names, types, links, counts, unpacked size counted as it decompresses) and stores it
content-addressed in the project's folder under `Settings.code_root`. Bundles are immutable: the same bytes
again answer 200 with the bundle already stored, new bytes 201.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.responses import JSONResponse

from api.auth import access_of, allow
from api.deps import ServicesDep
from api.limits import SafeText
from api.problems import Problem
from api.schemas.code import CODE_ID_PATTERN, CodeBundleList, CodeBundlePublic
from api.schemas.common import problems
from infra.code_bundles import (BundleError, BundleLimits, BundleTooLarge, StoredBundle, get_bundle, list_bundles,
                                store_bundle)
from infra.settings import Settings

PATH = "/api/v1/code"
router = APIRouter(prefix=PATH, tags=["code"])


def limits(settings: Settings) -> BundleLimits:
    return BundleLimits(max_bytes=settings.max_code_bytes, max_files=settings.max_code_files,
                        max_unpacked_bytes=settings.max_code_unpacked_bytes)


def public(b: StoredBundle) -> CodeBundlePublic:
    return CodeBundlePublic.model_validate({**b.sidecar(), "created_at": b.created_at})


@router.post("", dependencies=[allow("code.upload")], status_code=201, response_model=CodeBundlePublic,
             responses={200: {"model": CodeBundlePublic, "description": "these bytes were already stored in this "
                                                                       "project: the bundle as it was stored"},
                        **problems(400, 413, 422)})
def upload_code(
    request: Request,
    s: ServicesDep,
    file: Annotated[UploadFile, File(description="a .tar.gz or .zip of a project folder (the format is read from "
                                                 "the content): at most 100 MiB (Settings.max_code_bytes), 10,000 "
                                                 "members and 1 GiB unpacked; no absolute paths, '..', links "
                                                 "leaving the bundle, devices or fifos")],
    name: Annotated[SafeText | None, Form(min_length=1, max_length=200,
                                          description="a name to remember it by (default: the file's name)")] = None,
) -> JSONResponse:
    """Check every member of the bundle and store it in the project, content-addressed: 201 with its `code_id`
    (the first 32 hex digits of its sha256), 200 with the stored bundle when these bytes are already there."""
    try:
        stored = store_bundle(file.file, name or file.filename or "", s.settings.code_root,
                              project=access_of(request).project, limits=limits(s.settings))
    except BundleTooLarge as e:
        raise Problem(413, "Payload too large", str(e), "file") from None
    except BundleError as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from None
    return JSONResponse(public(stored).model_dump(mode="json"), status_code=200 if stored.existed else 201)


@router.get("", dependencies=[allow("code.read")], response_model=CodeBundleList, responses=problems(422))
def list_code(request: Request, s: ServicesDep) -> CodeBundleList:
    """The project's code bundles, newest first."""
    return CodeBundleList(items=[public(b) for b in list_bundles(s.settings.code_root, access_of(request).project)])


@router.get("/{code_id}", dependencies=[allow("code.read")], response_model=CodeBundlePublic,
            responses=problems(404, 422))
def get_code(request: Request, s: ServicesDep,
             code_id: Annotated[str, Path(pattern=CODE_ID_PATTERN,
                                          description="32 lowercase hex digits")]) -> CodeBundlePublic:
    """One bundle of the project; another project's is 404, as a missing one."""
    bundle = get_bundle(s.settings.code_root, access_of(request).project, code_id)
    if bundle is None:
        raise Problem(404, "Not found", f"no code bundle {code_id}", "code_id")
    return public(bundle)
