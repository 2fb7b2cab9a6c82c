"""Two tenants for the isolation tests (tests/test_isolation.py): projects `alpha` and `beta`, each with a user per
role (viewer, engineer, deployer, admin), all made through the API with the first owner's token, each signed in
with an access token. And the in-process app they talk to, with every PostgreSQL read model running beside it as in
`serve` (so a command's answer, read back from its read model, is the real one).

    with isolated_app(database_url, data_dir, dataset_root) as (client, services):
        tenants = make_tenants(client)
        client.get("/api/v1/training/jobs", headers=tenants.headers("beta", "viewer"))

`make_tenants` is idempotent (a second call, from another section's fixture, signs the same users in again), and
`assert_no_canary` is the check that no body of one tenant ever shows what another planted.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.auth import admin_token, bearer
from tests.support.waiting import eventually

PROJECTS = ("alpha", "beta")
ROLES = ("viewer", "engineer", "deployer", "admin")
PASSWORD = "isolation tests are hostile"  # long enough, not a common one


@contextlib.contextmanager
def isolated_app(database_url: str, data_dir: Path, dataset_root: Path) -> Iterator[tuple[Any, Any]]:
    """(TestClient with the owner's token, Services): the real app over PostgreSQL and chDB (`data_dir`: chDB
    allows one data path per process, so pass the session's), every read model running in a child process."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from commands.credentials import sha256
    from commands.training import TrainingApplication
    from entrypoints.bootstrap import build_services
    from infra.settings import Settings
    from projections.hosting import ProjectionProcess
    from projections.read_models import process_specs

    services = build_services(Settings(database_url=database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=data_dir, dataset_roots=str(dataset_root)))
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    specs = process_specs(TrainingApplication)
    read_models = ProjectionProcess(specs, database_url, {name: services.health.stage(name) for name, *_ in specs})
    thread = threading.Thread(target=loop.run_until_complete, args=(read_models.run(stop),), daemon=True)
    thread.start()
    try:
        token = admin_token(services.settings.data_dir)

        def known() -> bool:  # the identity read model has the first owner: the token works
            services.auth.cache.reload()
            return services.auth.cache.token(sha256(token)) is not None
        eventually(known, timeout=60, interval=0.1, message="the owner's token never worked")
        with TestClient(create_app(services), raise_server_exceptions=False) as client:
            client.headers.update(bearer(token))
            yield client, services
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        services.close()


@dataclass(frozen=True)
class Tenants:
    """Access tokens by (project, role); `headers` are what a request of that user in that project sends."""
    tokens: dict[tuple[str, str], str]

    @staticmethod
    def user(project: str, role: str) -> str:
        return f"{project}-{role}"

    def headers(self, project: str, role: str, acting_in: str | None = None) -> dict[str, str]:
        """The credentials of `project`'s `role` user, acting in `acting_in` (default: its own project)."""
        return {**bearer(self.tokens[(project, role)]), "X-Trainyard-Project": acting_in or project}


def make_tenants(client: Any) -> Tenants:
    """Projects alpha and beta with a user per role, made through the API (`client` sends the owner's token);
    what already exists is kept. Returns each user's access token."""
    for project in PROJECTS:
        r = client.post("/api/v1/projects", json={"name": project, "description": f"isolation tests: {project}"})
        assert r.status_code in (201, 409), r.text
        for role in ROLES:
            name = Tenants.user(project, role)
            r = client.post("/api/v1/users", json={"name": name, "password": PASSWORD})
            assert r.status_code in (201, 409), r.text
            r = client.put(f"/api/v1/projects/{project}/members/{name}", json={"role": role})
            assert r.status_code == 200, r.text
    tokens = {}
    anonymous = type(client)(client.app, raise_server_exceptions=False)
    for project in PROJECTS:
        for role in ROLES:
            r = anonymous.post("/api/v1/auth/token", data={"username": Tenants.user(project, role),
                                                           "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[(project, role)] = r.json()["access_token"]
    return Tenants(tokens)


def assert_no_canary(body: str | bytes, canaries: Iterable[str], what: str = "") -> None:
    """No planted string of the other tenant in `body` (a response's text)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    leaked = [c for c in canaries if c in text]
    assert not leaked, f"{what}: leaked {leaked}: {text[:500]}"
