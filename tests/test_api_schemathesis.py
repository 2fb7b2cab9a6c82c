"""The OpenAPI document states what validation enforces: schemathesis generates requests from it, valid and not, for
every operation of the real app (PostgreSQL event store and read models, chDB) in-process over ASGI, and no answer
is a server error, an undocumented status or a body that does not match its documented schema. Bounded: a few
examples per operation."""
from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from api.app import create_app
from commands.training import TrainingApplication
from entrypoints.bootstrap import build_services
from infra.settings import Settings
from projections.read_models import process_specs
from projections.hosting import ProjectionProcess

pytestmark = pytest.mark.integration
EXAMPLES = 40  # per operation: the whole run stays well under a minute
DOCUMENTED = [status_code_conformance, content_type_conformance, response_schema_conformance]
CHECKS = [not_a_server_error, *DOCUMENTED]  # /readyz answers a documented 503 when not ready (here: no NATS)


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    name = f"trainyard_fuzz_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server.rpartition('/')[0]}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def app(database: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # chDB allows one data path per process: share the session's (data_dir/chdb is the clickhouse fixture's path)
    root: Path = tmp_path_factory.mktemp("dataset-root")
    services = build_services(Settings(database_url=database, nats_url="nats://127.0.0.1:4222", clickhouse_url=None,
                              data_dir=clickhouse.path.parent, dataset_roots=str(root)))
    # the read models run as in `serve`, so a command's answer (read back from its read model) is the real one
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    specs = process_specs(TrainingApplication)
    read_models = ProjectionProcess(specs, database, {name: services.health.stage(name) for name, *_ in specs})
    thread = threading.Thread(target=loop.run_until_complete, args=(read_models.run(stop),), daemon=True)
    thread.start()
    yield create_app(services)
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    services.close()


def test_every_answer_is_documented_and_none_is_a_server_error(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    findings: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS if case.path != "/readyz" else DOCUMENTED)

        try:
            check()
        except (Exception, BaseExceptionGroup) as e:  # every operation's findings, then one assertion
            findings[operation.label] = " ".join(str(e).split())[:600]
    assert not findings, "\n".join(f"{label}: {why}" for label, why in findings.items())
