"""Operations: liveness and readiness. `/readyz` tells the truth about every stage (what `trainyard status` prints)."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import allow
from domain.access import PUBLIC

router = APIRouter(tags=["ops"])


class StagePublic(BaseModel):
    status: Literal["ok", "starting", "stuck", "error", "behind"]
    position: int | None
    head: int | None
    lag: int | None
    last_progress_s: float | None
    last_error: str | None
    poisoned: int


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
    stages: dict[str, StagePublic]


@router.get("/healthz", dependencies=[allow(PUBLIC)])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", dependencies=[allow(PUBLIC)], response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
def readyz(request: Request) -> JSONResponse:
    """Engines reachable, and per stage its position, lag, seconds since it last made progress, last error and how
    many items it set aside. 503 when an engine is unreachable or a stage is stuck, failing or too far behind."""
    s: Any = request.app.state.services
    checks: dict[str, str] = {}
    try:
        with s.pool.connection() as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as e:
        checks["postgres"] = f"error: {type(e).__name__}"
    try:
        s.clickhouse.query("SELECT 1")
        checks["clickhouse"] = "ok"
    except Exception as e:
        checks["clickhouse"] = f"error: {type(e).__name__}"
    nc = request.app.state.nats
    checks["nats"] = "ok" if nc is not None and nc.is_connected else "error: not connected"
    ready = all(v == "ok" for v in checks.values()) and s.health.healthy()
    body = {"ready": ready, "checks": checks, "stages": s.health.snapshot()}
    return JSONResponse(body, status_code=200 if ready else 503)
