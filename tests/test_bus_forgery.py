"""The inference server does not trust the bus: anyone who reaches NATS can publish deployment and API-key events,
and what they say is never applied (serving/feed.py checks every event against the read model); what it shows to
callers without a key is what a load balancer needs; a prediction's id is the server's own.

One `trainyard up` (serve, 2 runners, serve-inference) with two exported versions of a breast-cancer model.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from domain.contract import event_subject
from infra.messaging import DLQ_STREAM, EVENTS_STREAM
from serving.feed import API_KEY, DEPLOYMENT
from tests.support.stack import up_on_a_fresh_database
from tests.support.waiting import eventually
from tests.test_serving import DEPLOYMENTS, KEYS, ROWS, Serving

pytestmark = pytest.mark.integration
FORGED_VERSION = 2**31 - 1
ATTACKER_KEY = "ty_attacker-chosen-key-0000000000"


@pytest.fixture(scope="module")
def serving(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-forgery")) as s:
        yield Serving(s)


async def _forge(nats_url: str, forgeries: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Publish (subject, copy-from subject, changes) on plain NATS, as anyone on the host could: each forgery is
    the last real event on the copy-from subject with `changes` applied (payload keys merged). Returns them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sent = []
    try:
        for subject, model, changes in forgeries:
            real = json.loads((await js.get_last_msg(EVENTS_STREAM, model)).data)
            forged = {**real, **{k: v for k, v in changes.items() if k != "payload"},
                      "event_id": str(uuid.uuid4()), "payload": {**real["payload"], **changes.get("payload", {})}}
            await nc.publish(subject, json.dumps(forged).encode())
            sent.append(forged)
        await nc.flush()
    finally:
        await nc.close()
    return sent


async def _last_event(nats_url: str, subject: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        return json.loads((await nc.jetstream().get_last_msg(EVENTS_STREAM, subject)).data)
    finally:
        await nc.close()


async def _dead_letters(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages
    finally:
        await nc.close()


def test_forged_key_and_deployment_events_change_nothing_and_real_changes_still_apply(serving: Serving) -> None:
    http, nats_url = serving.http, serving.stack.nats_url
    body = {"name": "forged", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100},
                                           {"name": "b", "model": "bc", "version": 2, "weight": 0}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201, body
    serving.wait_revision("forged", 1)
    scoped = http.post(KEYS, json={"name": "scoped", "deployments": ["forged"]}).json()
    serving.until_accepted("forged", scoped["key"])
    honest = serving.predict("forged", ROWS[:40]).json()
    assert set(honest["predictions"]) == {"malignant", "benign"}, honest

    created = asyncio.run(_last_event(nats_url, event_subject(DEPLOYMENT, "created")))
    assert created["payload"]["name"] == "forged"
    swapped = [{**v, "artifact": {**v["artifact"], "class_labels": ["benign", "malignant"]}}
               for v in created["payload"]["variants"]]
    everything_id = http.get(KEYS).json()["items"][0]["id"]
    key_created, key_revoked = event_subject(API_KEY, "created"), event_subject(API_KEY, "revoked")
    dead_before = asyncio.run(_dead_letters(nats_url))
    forged = asyncio.run(_forge(nats_url, [
        (key_created, key_created, {"aggregate_id": str(uuid.uuid4()), "aggregate_version": FORGED_VERSION,
                                    "payload": {"name": "mine", "deployments": "*", "rate_limit_per_s": None,
                                                "key_hash": hashlib.sha256(ATTACKER_KEY.encode()).hexdigest()}}),
        *((key_revoked, key_created, {"aggregate_id": key_id, "aggregate_version": FORGED_VERSION,
                                      "type": "api_key.revoked", "payload": {"reason": "forged"}})
          for key_id in (everything_id, scoped["id"])),
        (event_subject(DEPLOYMENT, "revised"), event_subject(DEPLOYMENT, "created"),
         {"aggregate_version": FORGED_VERSION, "type": "deployment.revised",
          "payload": {"revision": 99, "variants": swapped}}),
    ]))
    assert len(forged) == 4

    def unchanged() -> None:
        assert serving.predict("forged", [ROWS[0]], api_key=ATTACKER_KEY).status_code == 401
        for key in (serving.key, scoped["key"]):
            r = serving.predict("forged", ROWS[:40], api_key=key)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == honest["predictions"] and r.json()["revision"] == 1

    # While the forgeries are retried (the feed waits for the read model to reach them) and after they are set
    # aside: nothing they say is served, and the server stays ready.
    def all_dead_lettered() -> bool:
        unchanged()
        return asyncio.run(_dead_letters(nats_url)) >= dead_before + 4

    eventually(all_dead_lettered, timeout=40, interval=0.5, message="the forged events were never set aside")
    ready = serving.inference.get("/readyz", headers=serving.auth)
    assert ready.status_code == 200, ready.text
    assert ready.json()["stages"]["deployment-feed"]["poisoned"] >= 4 and ready.json()["deployments"]["forged"] == 1

    # A real revision after the forged one (aggregate version 2^31-1) applies.
    r = http.patch(f"{DEPLOYMENTS}/forged/traffic", json={"weights": {"a": 0, "b": 100}})
    assert r.status_code == 200 and r.json()["revision"] == 2, r.text
    serving.wait_revision("forged", 2, timeout=5)
    after = serving.predict("forged", [ROWS[0]]).json()
    assert after["variant"] == "b" and after["version"] == 2 and after["classes"] == ["malignant", "benign"]
    # And a real revocation still revokes.
    assert http.delete(f"{KEYS}/{scoped['id']}").status_code == 200
    eventually(lambda: serving.predict("forged", [ROWS[0]], api_key=scoped["key"]).status_code == 401,
               timeout=1.0, interval=0.01, message="the revoked key was still accepted after a second")


def test_a_prediction_id_is_the_servers_own_and_a_client_id_is_only_a_correlation(serving: Serving) -> None:
    body = {"name": "ids", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert serving.http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("ids", 1)
    first, second = (serving.predict("ids", [ROWS[0]], **{"X-Request-Id": "client-7"}) for _ in range(2))
    for r in (first, second):
        assert r.status_code == 200, r.text
        assert r.json()["correlation_id"] == "client-7" and r.headers["x-correlation-id"] == "client-7"
        assert r.headers["x-request-id"] == r.json()["request_id"] != "client-7"
    assert first.json()["request_id"] != second.json()["request_id"]
    refused = serving.predict("ids", [[1.0]], **{"X-Request-Id": "client-8"})
    assert refused.status_code == 422 and refused.headers["x-request-id"] == refused.json()["request_id"]

    ours = first.json()["request_id"]

    def known() -> dict[str, Any] | None:
        r = serving.http.post(f"{DEPLOYMENTS}/ids/feedback", json=[{"request_id": ours, "label": "benign"},
                                                                   {"request_id": "client-7", "label": "benign"}])
        assert r.status_code == 202, r.text
        return r.json() if ours not in r.json()["unknown_request_ids"] else None

    accepted = eventually(known, timeout=30, interval=0.5, message="the prediction never reached ClickHouse")
    assert accepted["unknown_request_ids"] == ["client-7"]


def test_without_a_key_only_readiness_and_a_count_are_shown(serving: Serving) -> None:
    body = {"name": "listed", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert serving.http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("listed", 1)
    anonymous = serving.inference.get("/v1/deployments")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert serving.inference.get("/v1/deployments", headers={"Authorization": "Bearer ty_nope"}).status_code == 401
    ready = serving.inference.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()) == {"ready", "deployments"}
    assert ready.json()["ready"] is True and ready.json()["deployments"] >= 1

    scoped = serving.http.post(KEYS, json={"name": "listing", "deployments": ["listed"]}).json()
    serving.until_accepted("listed", scoped["key"])
    auth = {"Authorization": f"Bearer {scoped['key']}"}
    items = serving.inference.get("/v1/deployments", headers=auth).json()["items"]
    assert [d["name"] for d in items] == ["listed"] and items[0]["variants"]["a"] == {"model": "bc", "version": 1}
    detail = serving.inference.get("/readyz", headers=auth).json()
    assert detail["deployments"] == {"listed": 1} and "deployment-feed" in detail["stages"]
    everything = serving.inference.get("/readyz", headers=serving.auth).text
    assert str(serving.stack.data_dir) not in everything and "/artifacts" not in everything
