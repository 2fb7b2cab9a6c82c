"""GET /api/v1/studies/{id}/importances: computed once per study version, never many at a time (the in-process
API on real PostgreSQL; the study and its trials are written straight into the read model, no projector runs
here)."""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.support.auth import signed_in_client
from api.importances import ImportanceCache
from commands.study_optimizer import StudyOptimizer
from entrypoints.bootstrap import build_services
from infra.settings import Settings

NOW = "2025-05-01T12:00:00+00:00"
SPACE = {"num_leaves": {"type": "int", "low": 8, "high": 256},
         "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True}}


@pytest.fixture(scope="module")
def client(module_database_url: str, clickhouse) -> Iterator[TestClient]:
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent))
    with signed_in_client(services) as c:
        yield c
    services.close()


def add_study(database_url: str, trials: int) -> uuid.UUID:
    study_id, rng = uuid.uuid4(), random.Random(7)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO studies (id, name, framework, task, dataset, objective, search_space, fixed_params, "
                     "sampler, pruner, n_trials, max_parallel, priority, tags, status, created_at, updated_at, "
                     "version) VALUES (%s, 'imp', 'lightgbm', 'binary_classification', "
                     "'{\"uri\": \"builtin://breast_cancer\"}', '{\"metric\": \"auc\", \"direction\": \"maximize\"}', "
                     "%s, '{}', '{\"type\": \"tpe\"}', '{\"type\": \"none\"}', 1000, 4, 'medium', '{}', 'running', "
                     "%s, %s, %s)", (study_id, json.dumps(SPACE), NOW, NOW, trials + 1))
        for n in range(trials):
            add_trial(conn, study_id, n, rng)
    return study_id


def add_trial(conn: psycopg.Connection, study_id: uuid.UUID, number: int, rng: random.Random) -> None:
    leaves, lr = rng.randint(8, 256), rng.uniform(0.01, 0.3)
    conn.execute("INSERT INTO trials (study_id, number, job_id, state, params, value, asked_at, version) "
                 "VALUES (%s, %s, %s, 'completed', %s, %s, %s, %s)",
                 (study_id, number, uuid.uuid4(), json.dumps({"num_leaves": leaves, "learning_rate": lr}),
                  leaves / 256 + rng.random() * 0.05, NOW, number + 1))


class Spy:
    """Counts the optimizer's importance computations and the most that ran at once (each made `delay_s` slower)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> None:
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()
        real = StudyOptimizer.importances

        def importances(opt: StudyOptimizer) -> dict[str, float]:
            with self.lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(delay_s)
                return real(opt)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(StudyOptimizer, "importances", importances)


def get_many(client: TestClient, paths: list[str]) -> list:
    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(client.get, paths))


def test_concurrent_calls_compute_once_and_a_finished_trial_recomputes(client, module_database_url, monkeypatch):
    study_id = add_study(module_database_url, 300)
    spy = Spy(monkeypatch)
    path = f"/api/v1/studies/{study_id}/importances"
    answers = get_many(client, [path] * 20)
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert answers[0].json()["completed_trials"] == 300 and set(answers[0].json()["importances"]) == set(SPACE)
    assert spy.calls == 1
    assert client.get(path).status_code == 200 and spy.calls == 1  # later calls: the cached answer

    with psycopg.connect(module_database_url) as conn:  # one more trial completes
        add_trial(conn, study_id, 300, random.Random(1))
    r = client.get(path)
    assert r.status_code == 200 and r.json()["completed_trials"] == 301 and spy.calls == 2


def test_computations_for_different_studies_run_one_at_a_time(client, module_database_url, monkeypatch):
    studies = [add_study(module_database_url, 30) for _ in range(4)]
    spy = Spy(monkeypatch, delay_s=0.2)
    answers = get_many(client, [f"/api/v1/studies/{s}/importances" for s in studies])
    assert {r.status_code for r in answers} == {200}
    assert spy.calls == 4 and spy.most == 1


def test_a_call_that_cannot_get_a_slot_is_a_503_with_retry_after(client, module_database_url, monkeypatch):
    monkeypatch.setattr(client.app.state, "importances", ImportanceCache(wait_s=0.3))
    slow, other = add_study(module_database_url, 30), add_study(module_database_url, 30)
    Spy(monkeypatch, delay_s=2.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.get, f"/api/v1/studies/{slow}/importances")
        time.sleep(0.5)
        r = client.get(f"/api/v1/studies/{other}/importances")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert first.result().status_code == 200
    assert client.get("/api/v1/studies").status_code == 200  # the rest of the API answered throughout
