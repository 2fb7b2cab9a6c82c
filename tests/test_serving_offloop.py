"""The inference server runs models off its event loop, at most `workers` at a time (serving/app.py): a long model
run on one deployment does not hold up another deployment's requests, and runs beyond the bound wait their turn."""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from typing import Any

from domain.api_key import hash_key, new_key
from serving.app import InferenceApp
from serving.state import LiveDeployment, ModelLoader, ServingState, Telemetry
from tests.test_serving_state import artifact_store, snapshot  # noqa: F401  (artifact_store is a fixture)


class Held:
    """A session whose runs wait until released (stands for a model that takes long on a big request)."""

    def __init__(self, session: Any) -> None:
        self.session, self.release, self.started = session, threading.Event(), threading.Event()

    def run(self, *args: Any) -> Any:
        self.started.set()
        assert self.release.wait(10), "never released"
        return self.session.run(*args)


def _app(store: dict, workers: int) -> tuple[InferenceApp, str, Held]:
    state = ServingState(ModelLoader(store.__getitem__))
    for name in ("slow", "fast"):
        assert state.apply_deployment({**snapshot(store, 1), "name": name}, version=1)
    slow = state.deployments["slow"]
    held = Held(slow.variants["a"].session)
    variants = {n: replace(m, session=held) for n, m in slow.variants.items()}
    state.deployments["slow"] = LiveDeployment(slow.name, slow.revision, slow.version, slow.router, variants, None)
    key = new_key()
    state.apply_key("k", 1, {"name": "k", "key_hash": hash_key(key), "deployments": ["*"], "rate_limit_per_s": None})
    return InferenceApp(state, Telemetry("t"), None, workers=workers), key, held


async def _predict(app: InferenceApp, key: str, name: str) -> int:
    body = json.dumps({"instances": [[0.5] * 30]}).encode()
    scope = {"type": "http", "method": "POST", "path": f"/v1/deployments/{name}/predict",
             "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(body)).encode())]}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


def test_a_long_model_run_does_not_hold_up_another_deployment(artifact_store) -> None:  # noqa: F811
    async def scenario() -> None:
        app, key, held = _app(artifact_store, workers=2)
        slow = asyncio.create_task(_predict(app, key, "slow"))
        assert await asyncio.to_thread(held.started.wait, 5)
        assert await asyncio.wait_for(_predict(app, key, "fast"), 5) == 200  # while "slow" is still running
        assert not slow.done()
        held.release.set()
        assert await slow == 200

    asyncio.run(scenario())


def test_model_runs_beyond_the_bound_wait_their_turn(artifact_store) -> None:  # noqa: F811
    async def scenario() -> None:
        app, key, held = _app(artifact_store, workers=1)
        slow = asyncio.create_task(_predict(app, key, "slow"))
        assert await asyncio.to_thread(held.started.wait, 5)
        fast = asyncio.create_task(_predict(app, key, "fast"))
        await asyncio.sleep(0.3)
        assert not fast.done()  # the one worker is busy
        held.release.set()
        assert await asyncio.wait_for(slow, 5) == 200 and await asyncio.wait_for(fast, 5) == 200

    asyncio.run(scenario())
