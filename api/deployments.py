"""/api/v1/deployments (traffic splits, promote, rollback, history, prediction stats) and /api/v1/api-keys.

Everything is the request's project's (api/auth.py `access_of`): another project's deployment or key is 404, as a
missing one; a deployment's predictions and feedback are keyed in ClickHouse by `scoped(project, name)`."""
from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse

from api.auth import access_of, allow
from api.context import CommandContextDep
from api.deps import Services, ServicesDep
from api.models import catch_up
from api.problems import Problem
from api.quotas import admit_deployment
from api.schemas.ab import FeedbackAccepted, FeedbackItem
from api.schemas.common import IdPrefix, duration, problems
from api.schemas.deployments import (DeploymentHistory, DeploymentIn, DeploymentList, DeploymentName, DeploymentPublic,
                                     DeploymentUpdateIn, PolicySetIn, PolicyState, PolicyStep, PredictionStats,
                                     PromoteIn, ReasonIn, TrafficIn)
from api.schemas.keys import ApiKeyCreated, ApiKeyIn, ApiKeyList, ApiKeyPublic
from commands.deployments import ApiKeyNotFoundError, DeploymentNotFoundError
from domain.ab_policy import ramp_steps
from domain.contract import MAX_FEEDBACK, TELEMETRY_FEEDBACK, FeedbackBatch, scoped
from domain.deployment_spec import control_of

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
keys = APIRouter(prefix="/api/v1/api-keys", tags=["api keys"])
NamePath = Annotated[DeploymentName, Path()]
READ_MODEL = "deployments"
SinceS = duration("look back this far", 1, 90 * 86400)


def _deployment(s: Services, name: str, project: str) -> DeploymentPublic:
    row = s.deployments.get(name, project=project)
    if row is None:
        raise DeploymentNotFoundError(name)
    return _public(row)


def _public(row: dict[str, Any]) -> DeploymentPublic:
    """The row, with the policy's state when it has one: the ramp from the policy and the weights, the last
    evaluation from the policy engine's store."""
    out = DeploymentPublic.model_validate(row)
    if row.get("policy"):
        last = row.get("last_evaluation")
        weights = {v["name"]: v["weight"] for v in row["variants"]}
        halted = ((last or {}).get("figures") or {}).get("halted") or []
        out.policy_state = PolicyState(steps=[PolicyStep(**x) for x in ramp_steps(
            row["policy"], weights, control_of(row["variants"]), halted)], last_evaluation=last)
    return out


def _ref(ref: Any) -> dict[str, Any] | None:
    return None if ref is None else ref.model_dump(exclude_none=True)


def _answer(s: Services, name: str, project: str, position: int | None, status: int = 200) -> JSONResponse:
    catch_up(s, position, READ_MODEL)
    return JSONResponse(_deployment(s, name, project).model_dump(mode="json"), status_code=status)


@router.post("", dependencies=[allow("deployment.write")], status_code=201, response_model=DeploymentPublic, responses=problems(400, 409, 422))
def create_deployment(body: DeploymentIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """Deploy model versions (by number or alias) of the project's models as weighted variants; each needs a
    completed ONNX export (409 naming the variant otherwise). Revision 1."""
    project = access_of(request).project
    admit_deployment(s, project)
    _, position = s.deployment_commands.create(body.name, [v.model_dump(exclude_none=True) for v in body.variants],
                                               _ref(body.shadow), body.reason, ctx,
                                               policy=body.policy.model_dump() if body.policy else None,
                                               project=project)
    out = _answer(s, body.name, project, position, 201)
    out.headers["Location"] = f"{router.prefix}/{body.name}"
    return out


@router.get("", dependencies=[allow("deployment.read")], response_model=DeploymentList, responses=problems(422))
def list_deployments(request: Request, s: ServicesDep, active: bool | None = None) -> DeploymentList:
    return DeploymentList(items=[_public(r) for r in s.deployments.list(project=access_of(request).project,
                                                                          active=active)])


@router.get("/{name}", dependencies=[allow("deployment.read")], response_model=DeploymentPublic, responses=problems(404, 422))
def get_deployment(name: NamePath, request: Request, s: ServicesDep) -> DeploymentPublic:
    """The current revision."""
    return _deployment(s, name, access_of(request).project)


@router.get("/{name}/history", dependencies=[allow("deployment.read")], response_model=DeploymentHistory, responses=problems(404, 422))
def history(name: NamePath, request: Request, s: ServicesDep) -> DeploymentHistory:
    """Every revision, oldest first: its number, time, what changed, who and why."""
    project = access_of(request).project
    _deployment(s, name, project)
    return DeploymentHistory(name=name, revisions=s.deployments.history(name, project=project))  # type: ignore[arg-type]


@router.patch("/{name}/traffic", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def change_traffic(name: NamePath, body: TrafficIn, request: Request, s: ServicesDep,
                   ctx: CommandContextDep) -> JSONResponse:
    """New weights for every variant (integers summing to 100): a new revision."""
    project = access_of(request).project
    _, position = s.deployment_commands.change_traffic(name, body.weights, body.reason, ctx, project=project)
    return _answer(s, name, project, position)


@router.put("/{name}", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def update_deployment(name: NamePath, body: DeploymentUpdateIn, request: Request, s: ServicesDep,
                      ctx: CommandContextDep) -> JSONResponse:
    """Replace the variants and shadow (e.g. a canary of a new version): a new revision."""
    project = access_of(request).project
    _, position = s.deployment_commands.update(name, [v.model_dump(exclude_none=True) for v in body.variants],
                                               _ref(body.shadow), body.reason, ctx, project=project)
    return _answer(s, name, project, position)


@router.put("/{name}/policy", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def set_policy(name: NamePath, body: PolicySetIn, request: Request, s: ServicesDep,
               ctx: CommandContextDep) -> JSONResponse:
    """Attach, change or (null) remove the automatic ramp/promote/rollback policy."""
    project = access_of(request).project
    _, position = s.deployment_commands.set_policy(name, body.policy.model_dump() if body.policy else None,
                                                   body.reason, ctx, project=project)
    return _answer(s, name, project, position)


@router.post("/{name}/promote", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def promote(name: NamePath, body: PromoteIn, request: Request, s: ServicesDep,
            ctx: CommandContextDep) -> JSONResponse:
    """The variant takes 100% of the traffic: a new revision."""
    project = access_of(request).project
    _, position = s.deployment_commands.promote(name, body.variant, body.reason, ctx, project=project)
    return _answer(s, name, project, position)


@router.post("/{name}/rollback", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def rollback(name: NamePath, request: Request, s: ServicesDep, ctx: CommandContextDep,
             body: ReasonIn | None = None) -> JSONResponse:
    """A new revision equal to the one before the current (409 at revision 1)."""
    project = access_of(request).project
    _, position = s.deployment_commands.rollback(name, body.reason if body else None, ctx, project=project)
    return _answer(s, name, project, position)


@router.delete("/{name}", dependencies=[allow("deployment.write")], response_model=DeploymentPublic, responses=problems(404, 409, 422))
def deactivate(name: NamePath, request: Request, s: ServicesDep, ctx: CommandContextDep,
               reason: Annotated[str | None, Query(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] = None
               ) -> JSONResponse:
    """Stop serving it; a deactivated deployment takes no further change (409)."""
    project = access_of(request).project
    _, position = s.deployment_commands.deactivate(name, reason, ctx, project=project)
    return _answer(s, name, project, position)


@router.get("/{name}/predictions", dependencies=[allow("deployment.read")], response_model=PredictionStats, responses=problems(404, 422))
def prediction_stats(name: NamePath, request: Request, s: ServicesDep,
                     since_s: SinceS = 3600
                     ) -> PredictionStats:
    """Requests, errors and server-side latency per revision and variant (from ClickHouse `predictions`)."""
    project = access_of(request).project
    _deployment(s, name, project)
    since_ms = int((time.time() - since_s) * 1000)
    return PredictionStats(deployment=name,  # type: ignore[arg-type]
                           items=s.predictions.summary(scoped(project, name), since_ms))


@router.post("/{name}/feedback", dependencies=[allow("deployment.write")], status_code=202, response_model=FeedbackAccepted,
             responses=problems(400, 404, 413, 422, 503))
async def feedback(name: NamePath, items: Annotated[list[FeedbackItem], Body(max_length=MAX_FEEDBACK)],
                   request: Request) -> FeedbackAccepted:
    """Ground truth for earlier predictions (up to 10,000 per call): `label` (classification) or `value`
    (regression) per `request_id`. A repeated request id replaces its earlier feedback. Goes through JetStream to
    ClickHouse `feedback`, like predictions."""
    s: Services = request.app.state.services
    project = access_of(request).project
    deployment = await asyncio.to_thread(_deployment, s, name, project)
    key = scoped(project, name)  # the deployment in ClickHouse
    classes = _classes(deployment)
    for i, item in enumerate(items):
        if (item.label is None) == (item.value is None):
            raise Problem(422, "Invalid request", f"{i}: give exactly one of label and value", f"{i}.label")
        if classes is not None and item.label is not None and item.label not in classes:
            raise Problem(422, "Invalid request", f"{i}.label: {item.label!r} is not a class of {name!r}; its "
                                                  f"classes: {', '.join(sorted(classes))}", f"{i}.label")
    ids = [item.request_id for item in items]
    known = await asyncio.to_thread(s.predictions.known_requests, key, ids)
    # The batch id names this post (the time included): posting a label again after a correction is a new
    # replacement, not a repeat to drop.
    now_ms = int(time.time() * 1000)
    batch = FeedbackBatch(batch_id=hashlib.sha256(f"{key}|{now_ms}|{ids}|"
                                                  f"{[(i.label, i.value) for i in items]}".encode()).hexdigest()[:40],
                          deployment=key, request_id=ids, label=[i.label or "" for i in items],
                          value=[i.value for i in items], ts_ms=[now_ms] * len(items))
    nc = request.app.state.nats
    if nc is None:
        raise Problem(503, "Unavailable", "feedback needs NATS, which this API process has no connection to")
    data = batch.model_dump_json().encode()
    try:
        for start in range(0, len(items), FEEDBACK_CHUNK):  # each part under NATS' max payload
            part = data if len(items) <= FEEDBACK_CHUNK else _part(batch, start).model_dump_json().encode()
            await nc.jetstream().publish(TELEMETRY_FEEDBACK, part, timeout=5,
                                         headers={"Nats-Msg-Id": f"{batch.batch_id}:{start}"})
    except Exception as e:
        raise Problem(503, "Unavailable", f"feedback could not be queued: {type(e).__name__}; retry") from None
    unknown = [r for r in ids if r not in known]
    return FeedbackAccepted(received=len(items), known=len(items) - len(unknown), unknown=len(unknown),
                            unknown_request_ids=unknown[:100])


FEEDBACK_CHUNK = 2000


def _classes(deployment: DeploymentPublic) -> set[str] | None:
    """The labels its variants and shadow can predict, as predictions spell them (None: one of them records no
    classes, so any label may be right). A label outside them would count as wrong for every variant, silently."""
    served = [v.artifact for v in deployment.variants] + ([deployment.shadow.artifact] if deployment.shadow else [])
    labels = [a.get("class_labels") for a in served]
    if not labels or any(not ls for ls in labels):
        return None
    return {str(label) for ls in labels for label in ls}


def _part(batch: FeedbackBatch, start: int) -> FeedbackBatch:
    end = start + FEEDBACK_CHUNK
    return FeedbackBatch(batch_id=f"{batch.batch_id}-{start}", deployment=batch.deployment,
                         request_id=batch.request_id[start:end], label=batch.label[start:end],
                         value=batch.value[start:end], ts_ms=batch.ts_ms[start:end])


@keys.post("", dependencies=[allow("key.write")], status_code=201, response_model=ApiKeyCreated, responses=problems(400, 422))
def create_key(body: ApiKeyIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """A new inference API key of the project: it reaches the project's deployments only (those named, or all
    with "*"). The key is in this answer only; the service keeps its sha256."""
    project = access_of(request).project
    key, api_key, position = s.deployment_commands.create_key(body.name, body.deployments, body.rate_limit_per_s, ctx,
                                                              project=project)
    catch_up(s, position, READ_MODEL)
    row = s.deployments.key(api_key.id, project=project)
    if row is None:
        raise ApiKeyNotFoundError(str(api_key.id))
    return JSONResponse(ApiKeyCreated.model_validate({**row, "key": key}).model_dump(mode="json"), status_code=201)


@keys.get("", dependencies=[allow("key.read")], response_model=ApiKeyList, responses=problems(422))
def list_keys(request: Request, s: ServicesDep, id_prefix: IdPrefix = None) -> ApiKeyList:
    """The project's keys, oldest first (never the key itself: its prefix only)."""
    return ApiKeyList(items=[ApiKeyPublic.model_validate(r) for r in
                             s.deployments.keys(project=access_of(request).project, id_prefix=id_prefix)])


@keys.delete("/{key_id}", dependencies=[allow("key.write")], response_model=ApiKeyPublic, responses=problems(404, 409, 422))
def revoke_key(key_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> ApiKeyPublic:
    """Revoke: inference servers refuse it within a second."""
    project = access_of(request).project
    _, position = s.deployment_commands.revoke_key(key_id, None, ctx, project=project)
    catch_up(s, position, READ_MODEL)
    row = s.deployments.key(key_id, project=project)
    if row is None:
        raise ApiKeyNotFoundError(str(key_id))
    return ApiKeyPublic.model_validate(row)
