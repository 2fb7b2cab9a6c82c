"""The models, deployments and api_keys read models on real PostgreSQL: processing events twice changes nothing, a
rebuild from zero equals the live tables, and the history the API shows is the aggregate's sequence of revisions."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings, strategies as st

from commands.context import CommandContext
from commands.training import TrainingApplication
from domain.api_key import ApiKey, hash_key, key_prefix, new_key
from domain.deployment import Deployment
from domain.models import Lineage, ModelExport, RegisteredModel, model_id
from infra.postgres import eventsourcing_env, pool as make_pool
from projections.deployments import DeploymentQueries, DeploymentsProjection, DeploymentsView
from projections.models import ModelQueries, ModelsProjection, ModelsView
from tests.support.database import create_database, drop_database
from tests.support.strategies import deployment_commands, run_deployment_command, variant

pytestmark = pytest.mark.integration
TABLES = {"deployments": ("deployments", "deployment_revisions", "api_keys"),
          "models": ("models", "model_versions", "model_exports")}


def make(view_class: type, name: str, url: str) -> Any:
    env = Environment(name, eventsourcing_env(url))
    return InfrastructureFactory.construct(env=env).tracking_recorder(view_class)


@pytest.fixture(scope="module")
def store(postgres_server: str) -> Iterator[SimpleNamespace]:
    url, replica_url = create_database(postgres_server), create_database(postgres_server)
    app = TrainingApplication(env=eventsourcing_env(url))
    projections = {
        "deployments": (DeploymentsProjection(view=make(DeploymentsView, "deployments", url)),
                        DeploymentsProjection(view=make(DeploymentsView, "deployments", replica_url))),
        "models": (ModelsProjection(view=make(ModelsView, "models", url)),
                   ModelsProjection(view=make(ModelsView, "models", replica_url))),
    }
    pool = make_pool(url, max_size=2)
    yield SimpleNamespace(app=app, url=url, replica_url=replica_url, projections=projections,
                          deployments=DeploymentQueries(pool), models=ModelQueries(pool))
    pool.close()
    for pair in projections.values():
        for p in pair:
            p.view.datastore.close()
    app.close()
    drop_database(postgres_server, url)
    drop_database(postgres_server, replica_url)


def rows(url: str, tables: tuple[str, ...]) -> list[list[tuple]]:
    with psycopg.connect(url) as conn:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables]


def project(store: SimpleNamespace, kind: str, replica: bool = False, twice: bool = False) -> None:
    projection = store.projections[kind][1 if replica else 0]
    for n in store.app.recorder.select_notifications(start=1, limit=100_000):
        e, t = store.app.mapper.to_domain_event(n), Tracking(store.app.name, n.id)
        if any(n.topic.endswith(topic.split(":")[1]) and n.topic == topic for topic in projection.topics):
            projection.process_event(e, t)
            if twice:
                projection.process_event(e, t)


def save(store: SimpleNamespace, *aggregates: Any) -> None:
    store.app.save_with(CommandContext(actor="tester"), *aggregates)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(deployment_commands, max_size=12), revoke=st.booleans())
def test_deployment_history_equals_the_revisions_and_a_rebuild_equals_live(store, cmds: list, revoke: bool) -> None:
    name = f"d-{uuid4().hex[:12]}"
    d = Deployment.create(name, [variant("a", 60), variant("b", 40, version=2)], reason="first", project="default")
    save(store, d)
    for cmd in cmds:
        run_deployment_command(d, cmd)  # refused commands record nothing
        save(store, d)
    key = new_key()
    api_key = ApiKey.create(name="k", key_hash=hash_key(key), prefix=key_prefix(key), deployments=[name],
                            rate_limit_per_s=5, project="default")
    if revoke:
        api_key.revoke("leaked")
    save(store, api_key)
    project(store, "deployments", twice=True)  # each event twice: no change
    live = rows(store.url, TABLES["deployments"])
    project(store, "deployments")
    assert rows(store.url, TABLES["deployments"]) == live
    history = store.deployments.history(name, project="default")
    assert [(h["revision"], h["change"], h["reason"], h["variants"], h["shadow"], h["active"], h["rolled_back_to"])
            for h in history] == [(r["revision"], r["change"], r["reason"], [v.to_json() for v in r["variants"]],
                                   r["shadow"] and r["shadow"].to_json(), r["active"], r["rolled_back_to"])
                                  for r in d.revisions]
    current = store.deployments.get(name, project="default")
    assert (current["revision"], current["active"], current["variants"]) == (d.revision, d.active,
                                                                             d.snapshot()["variants"])
    assert sum(v["weight"] for v in current["variants"]) == 100
    assert (store.deployments.key(api_key.id, project="default")["revoked_at"] is not None) == revoke
    assert all(k["key_hash"] != key for k in store.deployments.live_keys())
    project(store, "deployments", replica=True)  # a rebuild from position zero
    assert rows(store.replica_url, TABLES["deployments"]) == rows(store.url, TABLES["deployments"])


def test_model_versions_aliases_and_exports_rebuild_to_the_live_tables(store) -> None:
    name = f"m-{uuid4().hex[:8]}"
    model = RegisteredModel(id=model_id(name), name=name, description="d", tags=["x"])
    for n in range(3):
        model.register_version(uuid4(), Lineage(job_id=str(uuid4()), framework="lightgbm", task="regression",
                                                dataset={}, dataset_sha256=None, params={"n": n}, final_metrics=None,
                                                artifact={}, feature_names=None, class_labels=None, study_id=None))
    model.set_alias("production", 1)
    model.set_alias("production", 3)
    model.set_alias("staging", 2)
    model.remove_alias("staging")
    save(store, model)
    export = ModelExport(id=uuid4(), model_name=name, model_version=3, format="onnx", tolerance=1e-4,
                         source={"framework": "lightgbm"})
    save(store, export)
    export.claim("lease-1", "host:1")
    export.expire_lease("lease-1", "gone")
    export.claim("lease-2", "host:2")
    export.complete("lease-2", {"max_abs_diff": 1e-6, "n_rows": 10.0}, {"uri": "file:///x.onnx", "n_features": 4,
                                                                       "parity_metric": "auc"})
    model.attach_onnx(3, export.id, dict(export.artifact), {"max_abs_diff": 1e-6, "passed": True})
    save(store, export, model)
    project(store, "models", twice=True)
    live = rows(store.url, TABLES["models"])
    got = store.models.get(name, project="default")
    assert got["aliases"] == {"production": 3} and got["latest_version"] == 3
    v3 = store.models.version(name, 3, project="default")
    assert v3["aliases"] == ["production"] and v3["onnx"]["input_shape"] == [None, 4]
    assert [(e["status"], e["attempt"]) for e in v3["exports"]] == [("completed", 2)]
    assert store.models.version(name, 1, project="default")["onnx"] is None
    project(store, "models", replica=True)
    assert rows(store.replica_url, TABLES["models"]) == live


def test_the_policys_last_evaluation_is_kept_per_deployment_and_shown_with_its_ramp_step(store) -> None:
    """An evaluation that changes nothing records no event, yet the deployment's view shows when it ran, what it
    saw and why it did nothing; the next evaluation replaces it."""
    from api.deployments import _public
    from commands.ab_policy import PolicyEngine
    from infra.health import Health
    from projections.deployments import PolicyEvaluations

    policy = {"metric": "accuracy", "min_samples": 100, "min_lift": 0.0, "max_p_value": 0.05, "ramp": [10, 50, 100],
              "step_every_s": 1, "max_p99_latency_ms": None, "max_error_rate": None}
    name = f"pol-{uuid4().hex[:8]}"
    save(store, Deployment.create(name, [variant("control", 90), variant("challenger", 10)], policy=policy, project="default"))
    project(store, "deployments")
    clock = [time.time() + 60]  # past the step time: waiting only on labels
    engine = PolicyEngine(None, store.deployments, lambda *_: ([], []), Health().stage("policy"),  # type: ignore[arg-type]
                          PolicyEvaluations(store.deployments.pool), clock=lambda: clock[0])
    assert store.deployments.get(name, project="default")["last_evaluation"] is None
    for _ in range(2):
        clock[0] += 5
        assert engine.evaluate(store.deployments.get(name, project="default")) is None  # nothing acted, nothing to command
    shown = _public(store.deployments.get(name, project="default")).model_dump(mode="json")["policy_state"]
    assert shown["steps"] == [{"variant": "challenger", "weight": 10, "step": 1, "of": 3, "ramp": [10, 50, 100],
                               "halted": False}]
    last = shown["last_evaluation"]
    assert (last["decision"], last["revision"]) == ("none", 1)
    assert datetime.fromisoformat(last["at"]).timestamp() == pytest.approx(clock[0], abs=1e-3)
    assert last["reason"] == "challenger at 10%: needs 100 labelled predictions per side at this revision, has 0 " \
                             "(control 0)"
    assert last["figures"]["weights"] == {"control": 90, "challenger": 10}
    with psycopg.connect(store.url) as conn:
        assert conn.execute("SELECT count(*) FROM policy_evaluations WHERE deployment = %s",
                            (name,)).fetchone() == (1,)
