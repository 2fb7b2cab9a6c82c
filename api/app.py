"""The FastAPI application: routes, problem+json errors, health and readiness."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api import jobs, problems
from infra.bootstrap import Services


def create_app(services: Services, nats_client: Any = None) -> FastAPI:
    app = FastAPI(title="Trainyard", version="0.1.0",
                  description="Event-sourced ML training service: submit, watch and query training jobs.")
    app.state.services = services
    app.state.nats = nats_client
    problems.install(app)
    app.include_router(jobs.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        s: Services = request.app.state.services
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
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
