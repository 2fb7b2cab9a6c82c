"""The API's HTTP edge: infra/http_edge.py's guard (trusted hosts, duplicate credentials, CSRF) with the API's
routes that may take a browser form's body."""
from __future__ import annotations

from fastapi import FastAPI

from api import code, datasets
from infra.http_edge import EdgeGuard
from infra.settings import Settings

# (method, path) of the routes whose body is a form or multipart by design; every other state-changing route
# refuses those content types (415). Extend it when a route takes a form: such a route is still protected by the
# Origin check, not by its content type.
SIMPLE_BODY_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("POST", datasets.PATH),  # multipart file upload
    ("POST", code.PATH),  # multipart code bundle upload
    ("POST", "/api/v1/auth/token"),  # OAuth2 password form
})


def install(app: FastAPI, settings: Settings) -> None:
    """Outermost of the app's own middleware: added last, it runs before the body limit and every route."""
    app.add_middleware(EdgeGuard, allowed_hosts=settings.allowed_host_list, simple_body_routes=SIMPLE_BODY_ROUTES)
