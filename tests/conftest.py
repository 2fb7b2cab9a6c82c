"""The tests' fixtures: real engines (PostgreSQL and NATS: the ones on 127.0.0.1 when present, else embedded;
chDB), a module's own `trainyard up`, and the CLI against a scripted API.

Each test gets its own PostgreSQL database; the session has its own nats-server (never the one on 4222). What the
fixtures are built from lives in tests/support/.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.messaging import STREAMS
from tests.support.database import create_database, drop_database
from tests.support.stack import Stack, up_on_a_fresh_database

if TYPE_CHECKING:
    from tests.support.fakes import Script, Step

# TestClient sends `Host: testserver`; the apps the tests build in-process must answer to it (infra/http_edge.py).
os.environ.setdefault("TRAINYARD_ALLOWED_HOSTS", "localhost,127.0.0.1,::1,testserver")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def engines_dir() -> Iterator[Path]:
    """Outside pytest's temp folder: embedded PostgreSQL runs as another user that must reach it."""
    path = Path(tempfile.mkdtemp(prefix="trainyard-engines-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(engines_dir: Path) -> Iterator[str]:
    """A server URL (database part is chosen per use)."""
    if url := os.environ.get("TRAINYARD_TEST_POSTGRES_URL"):
        yield url
    elif _listening(5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        from infra.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(engines_dir)
        server.start()
        yield server.superuser_url  # tests create and drop databases
        server.stop()


@pytest.fixture
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    url = create_database(postgres_server)
    yield url
    drop_database(postgres_server, url)


@pytest.fixture(scope="module")
def module_database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database shared by one module's tests."""
    url = create_database(postgres_server)
    yield url
    drop_database(postgres_server, url)


@pytest.fixture(scope="session")
def nats_url(engines_dir: Path) -> Iterator[str]:
    """The test session's own nats-server with JetStream, on a free port: tests never touch a running service's
    NATS (a `./dev up` on 4222 keeps its queue and events). TRAINYARD_TEST_NATS_URL names another server to use
    (its Trainyard streams are deleted first)."""
    if url := os.environ.get("TRAINYARD_TEST_NATS_URL"):
        asyncio.run(delete_streams(url))
        yield url
        return
    from infra.embedded import EmbeddedNats

    nats_server = EmbeddedNats(engines_dir / "nats", preferred_port=24222, accounts=False)
    yield nats_server.start()
    nats_server.stop()


async def delete_streams(url: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in STREAMS:
        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
    await nc.close()


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One chDB per test process (chDB allows one data path per process); tests isolate by job id."""
    from infra.clickhouse import connect as connect_clickhouse

    ch = connect_clickhouse(None, tmp_path_factory.mktemp("chdb") / "chdb")
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's own `trainyard up` (2 runners, short leases) on a fresh database and the session's NATS."""
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard")) as s:
        yield s


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI with no Trainyard settings of the developer's shell and no wait between export polls."""
    import api.cli.app
    import api.cli.models

    for var in ("TRAINYARD_API_URL", "TRAINYARD_INFERENCE_URL", "TRAINYARD_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path / "no-data-dir"))
    monkeypatch.setattr(api.cli.models, "EXPORT_POLL_S", 0.0)


@pytest.fixture
def scripted_api(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Script]:
    """scripted_api(*steps): the CLI's clients talk to this `Script` from now on; returns it."""
    import httpx

    import api.cli.app
    from api.client import TrainyardClient
    from tests.support.fakes import Script

    def install(*steps: Step) -> Script:
        script = Script(*steps)
        transport = httpx.MockTransport(script)
        monkeypatch.setattr(api.cli.app, "TrainyardClient",
                            lambda *a, **kw: TrainyardClient(*a, transport=transport, **kw))
        return script

    return install
