"""The FastAPI application: routes, problem+json errors, health and readiness."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api import (ab, auth, code, context, datasets, deployments, docs, edge, identity, jobs, logs, models, ops,
                 problems, retrains, schedules, stats, streams, studies)
from api.deps import Services
from api.importances import ImportanceCache
from api.limits import MULTIPART_SLACK_BYTES, BodyLimit
from api.schemas.common import document_unparsable_bodies


def create_app(services: Services, nats_client: Any = None) -> FastAPI:
    app = FastAPI(title="Trainyard", version="0.1.0",
                  description="Event-sourced ML training service: training jobs, hyperparameter studies, live metrics, "
                              "a model registry with ONNX exports, deployments with traffic splits.",
                  docs_url=None, redoc_url=None)  # /docs is served offline by api/docs.py
    app.state.services = services
    app.state.nats = nats_client
    app.state.importances = ImportanceCache()
    problems.install(app)
    context.install(app)
    for router in (jobs.router, logs.router, studies.router, studies.experiments, datasets.router, code.router,
                   models.router, deployments.router, deployments.keys, ab.router, identity.router, streams.router,
                   schedules.router, stats.router, retrains.router):
        auth.document_access(router)
        context.document_commands(router)
        document_unparsable_bodies(router)
        app.include_router(router)
    docs.install(app)
    settings = services.settings
    app.add_middleware(BodyLimit, default=settings.max_body_bytes,
                       per_path={datasets.PATH: settings.max_upload_bytes + MULTIPART_SLACK_BYTES,
                                 code.PATH: settings.max_code_bytes + MULTIPART_SLACK_BYTES})
    edge.install(app, settings)

    auth.document_access(ops.router)
    app.include_router(ops.router)
    _security_scheme(app)
    return app


def _security_scheme(app: FastAPI) -> None:
    """The bearer scheme every non-public route requires (an API token `ty_…` or an access token from
    POST /api/v1/auth/token)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer",
                "description": "an API token (ty_…) or an access token from POST /api/v1/auth/token"}
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]
