"""/api/v1/models: the model registry (models, versions from completed jobs, aliases), ONNX exports, and the
download of a version's native and ONNX files (streamed from the artifact store, sha256 in a header). Everything is
the request's project's (api/auth.py `access_of`): another project's model or export is 404, as a missing one."""
from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated
from urllib.parse import unquote, urlparse
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from api.auth import access_of, allow
from api.context import CommandContextDep
from api.deps import READ_YOUR_WRITES_TIMEOUT_S, Services, ServicesDep
from api.problems import Problem
from api.schemas.common import problems
from api.schemas.models import (AliasIn, AliasName, ExportIn, ExportPublic, ModelIn, ModelList, ModelName, ModelPublic,
                                VersionIn, VersionList, VersionPublic)
from commands.models import ExportNotFoundError, ModelNotFoundError
from domain.models import VersionNotFoundError

router = APIRouter(prefix="/api/v1/models", tags=["models"])
NamePath = Annotated[ModelName, Path()]
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
SHA256_HEADER = "X-Content-SHA256"
_DOWNLOAD = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                   "headers": {SHA256_HEADER: {"description": "hex sha256 of the file, as the lineage records it",
                                               "schema": {"type": "string"}}}},
             **problems(404, 422)}


def catch_up(s: Services, position: int | None, read_model: str = "models") -> None:
    if position is not None:
        s.applied.wait_for(read_model, s.app.name, position, READ_YOUR_WRITES_TIMEOUT_S)


def _model(s: Services, name: str, project: str) -> dict:
    row = s.models.get(name, project=project)
    if row is None:
        raise ModelNotFoundError(name)
    return row


def _version(s: Services, name: str, version: int, project: str) -> dict:
    row = s.models.version(name, version, project=project)
    if row is None:
        _model(s, name, project)
        raise VersionNotFoundError(f"model {name!r} has no version {version}")
    return row


@router.post("", dependencies=[allow("model.write")], status_code=201, response_model=ModelPublic, responses=problems(400, 409, 422))
def create_model(body: ModelIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """Create a registered model (names are unique in a project: 409 on a second create)."""
    project = access_of(request).project
    _, position = s.model_commands.create(body.name, body.description, body.tags, ctx, project=project)
    catch_up(s, position)
    return JSONResponse(ModelPublic.model_validate(_model(s, body.name, project)).model_dump(mode="json"),
                        status_code=201,
                        headers={"Location": f"{router.prefix}/{body.name}"})


@router.get("", dependencies=[allow("model.read")], response_model=ModelList, responses=problems(422))
def list_models(request: Request, s: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> ModelList:
    rows, total = s.models.list(project=access_of(request).project, limit=limit, offset=offset)
    return ModelList(items=[ModelPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{name}", dependencies=[allow("model.read")], response_model=ModelPublic, responses=problems(404, 422))
def get_model(name: NamePath, request: Request, s: ServicesDep) -> ModelPublic:
    return ModelPublic.model_validate(_model(s, name, access_of(request).project))


@router.post("/{name}/versions", dependencies=[allow("model.write")], status_code=201, response_model=VersionPublic, responses=problems(404, 409, 422))
def register_version(name: NamePath, body: VersionIn, request: Request, s: ServicesDep,
                     ctx: CommandContextDep) -> JSONResponse:
    """Register a completed job's artifact as the model's next version, with its lineage (a job of the same
    project: another project's job is 404, as a missing one)."""
    project = access_of(request).project
    _, number, position = s.model_commands.register_version(name, body.job_id, ctx, project=project)
    catch_up(s, position)
    out = VersionPublic.model_validate(_version(s, name, number, project))
    return JSONResponse(out.model_dump(mode="json"), status_code=201,
                        headers={"Location": f"{router.prefix}/{name}/versions/{number}"})


@router.get("/{name}/versions", dependencies=[allow("model.read")], response_model=VersionList, responses=problems(404, 422))
def list_versions(name: NamePath, request: Request, s: ServicesDep) -> VersionList:
    project = access_of(request).project
    _model(s, name, project)
    return VersionList(items=[VersionPublic.model_validate(r) for r in s.models.versions(name, project=project)])


@router.get("/{name}/versions/{version}", dependencies=[allow("model.read")], response_model=VersionPublic, responses=problems(404, 422))
def get_version(name: NamePath, version: VersionPath, request: Request, s: ServicesDep) -> VersionPublic:
    return VersionPublic.model_validate(_version(s, name, version, access_of(request).project))


@router.put("/{name}/aliases/{alias}", dependencies=[allow("model.write")], response_model=ModelPublic, responses=problems(404, 422))
def set_alias(name: NamePath, alias: Annotated[AliasName, Path()], body: AliasIn, request: Request,
              s: ServicesDep, ctx: CommandContextDep) -> ModelPublic:
    """Point `alias` (production, staging, any name) at a version; moves it if it pointed elsewhere."""
    project = access_of(request).project
    _, position = s.model_commands.set_alias(name, alias, body.version, ctx, project=project)
    catch_up(s, position)
    return ModelPublic.model_validate(_model(s, name, project))


@router.delete("/{name}/aliases/{alias}", dependencies=[allow("model.write")], response_model=ModelPublic, responses=problems(404, 422))
def remove_alias(name: NamePath, alias: Annotated[AliasName, Path()], request: Request, s: ServicesDep,
                 ctx: CommandContextDep) -> ModelPublic:
    project = access_of(request).project
    _, position = s.model_commands.remove_alias(name, alias, ctx, project=project)
    catch_up(s, position)
    return ModelPublic.model_validate(_model(s, name, project))


@router.post("/{name}/versions/{version}/exports", dependencies=[allow("model.export")], status_code=202, response_model=ExportPublic,
             responses=problems(404, 409, 422))
def request_export(name: NamePath, version: VersionPath, body: ExportIn, request: Request, s: ServicesDep,
                   ctx: CommandContextDep) -> JSONResponse:
    """Convert the version to ONNX on a runner and check parity with the native model on its validation split
    (202: watch `GET …/exports/{export_id}`)."""
    project = access_of(request).project
    export, position = s.model_commands.request_export(name, version, body.format, body.tolerance, ctx,
                                                       project=project)
    catch_up(s, position)
    row = s.models.export(export.id, project=project)
    if row is None:
        raise Problem(503, "Not yet visible", "the export was accepted but is not readable yet; retry the GET")
    return JSONResponse(ExportPublic.model_validate(row).model_dump(mode="json"), status_code=202,
                        headers={"Location": f"{router.prefix}/{name}/versions/{version}/exports/{export.id}"})


@router.get("/{name}/versions/{version}/exports/{export_id}", dependencies=[allow("model.read")], response_model=ExportPublic,
            responses=problems(404, 422))
def get_export(name: NamePath, version: VersionPath, export_id: UUID, request: Request,
               s: ServicesDep) -> ExportPublic:
    row = s.models.export(export_id, project=access_of(request).project)
    if row is None or row["model_name"] != name or row["model_version"] != version:
        raise ExportNotFoundError(str(export_id))
    return ExportPublic.model_validate(row)


@router.get("/{name}/versions/{version}/artifact", dependencies=[allow("model.read")], response_class=FileResponse, responses=_DOWNLOAD)
def download_artifact(name: NamePath, version: VersionPath, request: Request, s: ServicesDep) -> FileResponse:
    """The version's native model file (LightGBM text or a PyTorch state), streamed."""
    artifact = _version(s, name, version, access_of(request).project)["lineage"].get("artifact") or {}
    return _download(s, artifact, f"{name}-v{version}-model", f"model {name!r} version {version}", "no artifact")


@router.get("/{name}/versions/{version}/onnx", dependencies=[allow("model.read")], response_class=FileResponse, responses=_DOWNLOAD)
def download_onnx(name: NamePath, version: VersionPath, request: Request, s: ServicesDep) -> FileResponse:
    """The version's serving ONNX file (its last export that passed parity), streamed."""
    onnx = _version(s, name, version, access_of(request).project).get("onnx") or {}
    return _download(s, onnx, f"{name}-v{version}", f"model {name!r} version {version}",
                     "no completed ONNX export (POST …/exports first)")


def _download(s: Services, artifact: dict, stem: str, what: str, missing: str) -> FileResponse:
    """Only files under the artifact root are served: a lineage URI is data, not a licence to read the disk."""
    if not artifact.get("uri"):
        raise Problem(404, "Not found", f"{what} has {missing}", "version")
    parsed = urlparse(artifact["uri"])
    path = FilePath(unquote(parsed.path)).resolve() if parsed.scheme == "file" else None
    if path is None or not path.is_relative_to(s.settings.artifacts.resolve()) or not path.is_file():
        raise Problem(404, "Not found", f"{what}: its file is not in the artifact store", "version")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{stem}{path.suffix}",
                        headers={SHA256_HEADER: str(artifact.get("sha256") or "")})
