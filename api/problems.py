"""Errors as RFC 9457 problem+json, mapped in one place. Every problem names the field at fault when there is one.

Nothing leaves as plain text: unknown errors become a 500 problem (logged with their traceback here), and
what a problem echoes (a field path built from request keys, a detail) is truncated and made encodable, so a
hostile key cannot break the error response itself.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from commands.identity import (BadCredentials, PrincipalNotFoundError, ProjectNotFoundError,
                               TokenNotFoundError)
from commands.deployments import ApiKeyNotFoundError, DeploymentNotFoundError
from commands.models import ExportNotFoundError, ModelNotFoundError
from commands.retrains import RetrainNotFoundError
from commands.schedules import ScheduleNotFoundError
from commands.studies import StudyNotFoundError
from commands.training import IdempotencyConflictError, JobNotFoundError
from domain.access import Denied
from domain.api_key import ApiKeyError, ApiKeySpecError
from domain.identity import IdentityError, IdentitySpecError
from domain.quotas import OverQuota, QuotaSpecError
from domain.deployment_spec import DeploymentError, DeploymentSpecError
from domain.models import ModelError, ModelSpecError, VersionNotFoundError
from domain.retrain import RetrainError, RetrainSpecError
from domain.schedule import ScheduleError, ScheduleSpecError
from domain.study import StudyError
from domain.training_job import JobError

PROBLEM = "application/problem+json"
MAX_FIELD_CHARS, MAX_DETAIL_CHARS = 300, 2000
log = logging.getLogger("trainyard.api")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.errors = status, title, detail, field, errors
        self.headers = headers or {}
        self.extra = extra or {}  # problem extension members (RFC 9457 §3.2), e.g. a quota's limit and use


class ProblemResponse(JSONResponse):
    media_type = PROBLEM

    def render(self, content: Any) -> bytes:  # ASCII-escaped: a lone surrogate in an echoed key still encodes
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def problem_json(status: int, title: str, detail: str, instance: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> ProblemResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail[:MAX_DETAIL_CHARS], "instance": instance[:MAX_DETAIL_CHARS]}
    if field:
        body["field"] = field[:MAX_FIELD_CHARS]
    if errors:
        body["errors"] = [{"field": str(e["field"])[:MAX_FIELD_CHARS], "reason": str(e["reason"])[:MAX_DETAIL_CHARS]}
                          for e in errors[:20]]
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return ProblemResponse(body, status_code=status)


def problem_response(request: Request, p: Problem) -> JSONResponse:
    response = problem_json(p.status, p.title, p.detail, request.url.path, p.field, p.errors, p.extra)
    response.headers.update(p.headers)
    return response


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(x) for x in loc if x not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def _conflict(e: Exception) -> Problem:
    return Problem(409, "Conflict", str(e), getattr(e, "field", None))


def _invalid_field(e: Any) -> Problem:
    return Problem(422, "Invalid request", str(e), e.field)


# The domain's and the commands' errors, each as the problem it answers (the handler is found by the error's MRO).
DOMAIN_ERRORS: tuple[tuple[type[Exception], Callable[[Any], Problem]], ...] = (
    (JobNotFoundError, lambda e: Problem(404, "Not found", f"no training job {e}", "job_id")),
    (StudyNotFoundError, lambda e: Problem(404, "Not found", f"no study {e}", "study_id")),
    (ModelNotFoundError, lambda e: Problem(404, "Not found", f"no model {str(e)!r}", "name")),
    (VersionNotFoundError, lambda e: Problem(404, "Not found", str(e), "version")),
    (ExportNotFoundError, lambda e: Problem(404, "Not found", f"no export {e}", "export_id")),
    (DeploymentNotFoundError, lambda e: Problem(404, "Not found", f"no deployment {str(e)!r}", "name")),
    (ApiKeyNotFoundError, lambda e: Problem(404, "Not found", f"no API key {e}", "key_id")),
    (ScheduleNotFoundError, lambda e: Problem(404, "Not found", f"no schedule {e}", "schedule_id")),
    (ScheduleError, _conflict), (ScheduleSpecError, _invalid_field),
    (RetrainNotFoundError, lambda e: Problem(404, "Not found", f"no retrain {e}", "retrain_id")),
    (RetrainError, _conflict), (RetrainSpecError, _invalid_field),
    (IdempotencyConflictError, lambda e: Problem(409, "Conflict", str(e), "Idempotency-Key")),
    (JobError, _conflict), (StudyError, _conflict), (ModelError, _conflict), (DeploymentError, _conflict),
    (ApiKeyError, _conflict),
    (ModelSpecError, _invalid_field), (DeploymentSpecError, _invalid_field), (ApiKeySpecError, _invalid_field),
    (PrincipalNotFoundError, lambda e: Problem(404, "Not found", f"no user or service account {str(e)!r}", "name")),
    (ProjectNotFoundError, lambda e: Problem(404, "Not found", f"no project {str(e)!r}", "project")),
    (TokenNotFoundError, lambda e: Problem(404, "Not found", f"no token {e}", "token_id")),
    (IdentityError, _conflict), (IdentitySpecError, _invalid_field),
    (Denied, lambda e: Problem(e.status, "Forbidden" if e.status == 403 else "Not found", str(e))),
    (OverQuota, lambda e: Problem(
        429, "Quota exceeded", str(e), f"quotas.{e.name}",
        headers={"Retry-After": str(e.retry_after_s)} if e.retry_after_s else None,
        extra={"quota": e.name, "limit": e.limit, "used": e.used})),
    (QuotaSpecError, _invalid_field),
    (BadCredentials, lambda e: Problem(401, "Unauthorized", "wrong name, password or refresh token", None,
                                       headers={"WWW-Authenticate": "Bearer"})),
)


def _handler(to_problem: Callable[[Any], Problem]) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, to_problem(exc))
    return handle


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e["loc"])), "reason": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "reason": "invalid request"}
        status = 400 if any(e["type"] == "json_invalid" for e in exc.errors()) else 422
        return problem_response(request, Problem(status, "Invalid request", f"{first['field']}: {first['reason']}",
                                                 first["field"], errors))

    for error, to_problem in DOMAIN_ERRORS:
        app.add_exception_handler(error, _handler(to_problem))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "body" if exc.status_code == 400 else None  # FastAPI's 400s are bodies that do not parse
        return problem_response(request, Problem(exc.status_code, str(exc.detail), str(exc.detail), field))

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _store_away(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL is restarting or unreachable: a retryable 503, not a 500
        response = problem_response(request, Problem(503, "Service unavailable",
                                                     f"the database is not reachable ({type(exc).__name__}); retry"))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(request, Problem(500, "Internal server error",
                                                 "an unexpected error occurred; it was logged"))
