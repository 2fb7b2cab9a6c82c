"""A log written by an earlier Trainyard still loads: its events replayed into today's read models give the tables
that the code of its day built (tests/fixtures/event_log.json, recorded by tests/fixtures/record_event_log.py)."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.support.database import create_database, drop_database
from tests.support.read_models import read_models
from tests.support.replay import project_all

pytestmark = pytest.mark.integration
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "event_log.json").read_text())
READ_MODEL_TABLES = ("jobs", "studies", "trials", "models", "model_versions", "model_exports", "deployments",
                     "deployment_revisions", "api_keys")


# Columns added after the log was recorded, with the value a replay of that log must give them (its events predate
# what fills them). Each is left out of the comparison only where it holds exactly that default.
ADDED_COLUMNS: dict[str, dict[str, Any]] = {
    "jobs": {"hand_backs": 0, "requeue_reason": None, "project": "default", "retry_of": None,
             "from_checkpoint": False, "code": None, "resources": None, "resumed_from_step": None, "artifacts": [],
             "validation": None},
    "studies": {"project": "default"},
    "models": {"project": "default"},
    "model_exports": {"project": "default"},
    "deployments": {"project": "default"},
    "api_keys": {"project": "default"},
}


# Columns added later that the replay fills from events the old log has: no recorded value to compare with, but
# each must equal another column of the same row (a job's first start is its only start in this log).
DERIVED_COLUMNS: dict[str, dict[str, str]] = {"jobs": {"first_started_at": "started_at"}}


def _rows(url: str, table: str) -> list[str]:
    added = ADDED_COLUMNS.get(table, {})
    derived = DERIVED_COLUMNS.get(table, {})
    with psycopg.connect(url) as conn:
        rows = [json.loads(r[0]) for r in conn.execute(f'SELECT row_to_json(x)::text FROM "{table}" x')]
    for row in rows:
        for column, same_as in derived.items():
            assert row.pop(column) == row[same_as], (table, column, row["id"])
    return sorted(json.dumps({k: v for k, v in row.items() if not (k in added and v == added[k])}, sort_keys=True)
                  for row in rows)


@pytest.fixture(scope="module")
def replayed(postgres_server: str) -> Iterator[str]:
    url = create_database(postgres_server)
    application_class = read_models()[0][0]
    app = application_class(env=__import__("infra.postgres", fromlist=["x"]).eventsourcing_env(url))
    table = app.recorder.events_table_name
    assert {e["table"] for e in FIXTURE["events"]} == {table}, "the application's events table was renamed"
    with psycopg.connect(url) as conn:
        with conn.cursor() as curs:
            curs.executemany(f'INSERT INTO "{table}" (originator_id, originator_version, topic, state) '
                             "VALUES (%s, %s, %s, %s)",
                             [(UUID(e["originator_id"]), e["originator_version"], e["topic"],
                               base64.b64decode(e["state"])) for e in FIXTURE["events"]])
    app.close()
    project_all(url)
    yield url
    drop_database(postgres_server, url)


@pytest.mark.parametrize("table", READ_MODEL_TABLES)
def test_an_earlier_log_rebuilds_the_read_models_it_built(replayed: str, table: str) -> None:
    expected = sorted(json.dumps(row, sort_keys=True) for row in FIXTURE["tables"][table])
    assert expected, f"the fixture has no {table} rows: the recorder misses a lifecycle"
    assert _rows(replayed, table) == expected


def test_every_stored_event_loads_as_its_aggregate(replayed: str) -> None:
    """Each aggregate of the old log loads under today's classes (its events' upcasters and rules)."""
    from infra.postgres import eventsourcing_env

    application_class = read_models()[0][0]
    app = application_class(env=eventsourcing_env(replayed))
    try:
        ids: dict[str, Any] = {}
        for e in FIXTURE["events"]:
            ids[e["originator_id"]] = e["originator_version"]
        for originator_id, version in ids.items():
            assert app.repository.get(UUID(originator_id)).version == version
    finally:
        app.close()
