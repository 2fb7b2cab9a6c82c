"""Errors as RFC 9457 problem+json, mapped in one place. Every problem names the field at fault when there is one."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from commands.training import IdempotencyConflictError, JobNotFoundError
from domain.training_job import JobError

PROBLEM = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.errors = status, title, detail, field, errors


def problem_response(request: Request, p: Problem) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": p.title, "status": p.status, "detail": p.detail,
                            "instance": request.url.path}
    if p.field:
        body["field"] = p.field
    if p.errors:
        body["errors"] = p.errors
    return JSONResponse(body, status_code=p.status, media_type=PROBLEM)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(x) for x in loc if x not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e["loc"])), "reason": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": None, "reason": "invalid request"}
        status = 400 if any(e["type"] == "json_invalid" for e in exc.errors()) else 422
        return problem_response(request, Problem(status, "Invalid request", f"{first['field']}: {first['reason']}",
                                                 first["field"], errors))

    @app.exception_handler(JobNotFoundError)
    async def _not_found(request: Request, exc: JobNotFoundError) -> JSONResponse:
        return problem_response(request, Problem(404, "Not found", f"no training job {exc}", "job_id"))

    @app.exception_handler(JobError)
    async def _conflict(request: Request, exc: JobError) -> JSONResponse:
        return problem_response(request, Problem(409, "Conflict", str(exc)))

    @app.exception_handler(IdempotencyConflictError)
    async def _idem(request: Request, exc: IdempotencyConflictError) -> JSONResponse:
        return problem_response(request, Problem(409, "Conflict", str(exc), "Idempotency-Key"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(request, Problem(exc.status_code, str(exc.detail), str(exc.detail)))
