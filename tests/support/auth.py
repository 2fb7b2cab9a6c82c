"""Credentials for tests: the first owner's token that the first start writes to the data dir, and, for an
in-process app (no projection process), the identity projection running beside it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.waiting import eventually

ADMIN_TOKEN = "admin-token"


def admin_token(data_dir: Path) -> str:
    return (Path(data_dir) / ADMIN_TOKEN).read_text().strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def identity_projection(database_url: str) -> Iterator[None]:
    """The identity read model kept up to date in this process, as serve's projection process does."""
    from eventsourcing.projection import ProjectionRunner

    from commands.training import TrainingApplication
    from infra.postgres import eventsourcing_env
    from projections.identity import IdentityProjection, IdentityView

    with ProjectionRunner(application_class=TrainingApplication, projection_class=IdentityProjection,
                          view_class=IdentityView, env=eventsourcing_env(database_url)):
        yield


def sign_in_owner(client: Any, services: Any) -> str:
    """Make `client` send the owner's token, once the identity cache knows it. Returns the token."""
    token = admin_token(services.settings.data_dir)
    client.headers.update(bearer(token))

    def known() -> bool:
        services.auth.cache.reload()
        return client.get("/api/v1/me").status_code == 200
    eventually(known, timeout=30, interval=0.1, message="the owner's token never worked")
    return token


@contextlib.contextmanager
def signed_in_client(services: Any, **client_options: Any) -> Iterator[Any]:
    """A TestClient on `create_app(services)` that sends the first owner's token, with the identity projection
    running beside it (as serve's projection process would)."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with identity_projection(services.settings.database_url), \
            TestClient(create_app(services), **{"raise_server_exceptions": False, **client_options}) as client:
        sign_in_owner(client, services)
        yield client
