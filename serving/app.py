"""The inference server's HTTP interface (`trainyard serve-inference`), a plain ASGI app: the request path is short
enough that a framework's routing and validation would be most of its cost.

    POST /v1/projects/{project}/deployments/{name}/predict
    POST /v1/deployments/{name}/predict   (the default project's deployment {name})
                                          {"instances": [[f1, f2, …], …] | [{"feature": value, …}, …], "key"?: str}
         → {"predictions", "probabilities"?, "classes"?, "deployment", "revision", "variant", "model", "version",
            "request_id", "correlation_id"?}
    GET  /v1/deployments                  with a key: what this server serves now that the key reaches (its project's; revision,
                                          variants, weights); 401 without one
    GET  /healthz, /readyz                liveness; readiness: without a key only ready or not and a count (what a
                                          load balancer needs), with a key also the stages, telemetry buffer and drops
                                          and the deployments the key reaches

`request_id` (also the `X-Request-Id` response header) is the server's own id for the prediction: feedback refers
to it. A client's `X-Request-Id` never becomes a prediction's identity (anyone could replay or pre-claim one); it
comes back as `correlation_id` only. Models run on a thread pool, at most `workers` at a time: onnxruntime
releases the GIL, so a big request does not hold up the event loop and the other deployments' requests.

Auth: `Authorization: Bearer <key>` or `X-API-Key`; 401 missing/unknown, 403 a deployment of the key's project it is
not scoped to, 404 a deployment of another project (a key reaches its own project only, and another project's
deployment is as missing as one that does not exist), 429 over the key's rate (with Retry-After). Errors are problem+json naming the field. The shadow variant (if any) gets a copy of each
request after the answer is sent, on a bounded queue: it never delays or fails the caller's request.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from domain.contract import DEFAULT_PROJECT, printable
from serving.state import (KeyState, LiveDeployment, LoadedModel, PredictError, ServingState, Telemetry, answer, first_row,
                           rows_of)

log = logging.getLogger("trainyard.inference")
MAX_BODY_BYTES = 1024 * 1024
_PREDICT = re.compile(r"^/v1/(?:projects/([a-z0-9][a-z0-9._-]{0,62})/)?deployments/([a-z0-9][a-z0-9-]{0,62})/predict$")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
JSON = [(b"content-type", b"application/json")]
PROBLEM = [(b"content-type", b"application/problem+json")]
NOTHING: tuple = ("", None, [], [])  # no answer to record (an error)


class InferenceApp:
    def __init__(self, state: ServingState, telemetry: Telemetry, health: Any, shadow_queue_size: int = 1000,
                 test_delays: dict[tuple[str, str], float] | None = None, workers: int | None = None) -> None:
        self.state, self.telemetry, self.health = state, telemetry, health
        # One model run per core at a time; more requests wait their turn on the semaphore, not on a thread.
        self.workers = workers or _cores()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx")
        self.running = asyncio.Semaphore(self.workers)
        self.test_delays = test_delays or {}  # (deployment, variant) → seconds; tests only (latency guardrails)
        self.shadow_queue: asyncio.Queue | None = None
        self.shadow_queue_size = shadow_queue_size
        self.shadow_dropped = 0

    # ---- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        m = _PREDICT.match(path)
        if m and method == "POST":
            return await self._predict(m.group(1) or DEFAULT_PROJECT, m.group(2), scope, receive, send)
        if method == "GET" and path == "/v1/deployments":
            key = self.state.key_of(_api_key(dict(scope["headers"])))
            if key is None:
                return await _send(send, 401, PROBLEM + [(b"www-authenticate", b"Bearer")], _problem(
                    401, "an API key is required (Authorization: Bearer <key> or X-API-Key)", "Authorization", path))
            return await _send(send, 200, JSON, {"items": self.describe(key)})
        if method == "GET" and path in ("/healthz", "/livez"):
            return await _send(send, 200, JSON, {"status": "ok"})
        if method == "GET" and path == "/readyz":
            report = self.readiness(self.state.key_of(_api_key(dict(scope["headers"]))))
            return await _send(send, 200 if report["ready"] else 503, JSON, report)
        if path.startswith(("/v1/deployments/", "/v1/projects/")) and path.endswith("/predict"):
            status, detail = (405, "use POST") if m else (404, "no such deployment name")
        else:
            status, detail = 404, f"no route {printable(path, 100)}"
        await _send(send, status, PROBLEM, _problem(status, detail, None, path))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- predict -----------------------------------------------------------------------------------------
    async def _predict(self, project: str, name: str, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"")
        correlation_id = given.decode() if _REQUEST_ID.match(given) else None
        request_id = uuid.uuid4().hex
        deployment: LiveDeployment | None = None
        variant = model = ""
        version = 0
        rows = 0
        first = NOTHING
        ids = [(b"x-request-id", request_id.encode())]
        if correlation_id is not None:
            ids.append((b"x-correlation-id", correlation_id.encode()))
        try:
            self.state.authorize(_api_key(headers), name, project)
            deployment = self.state.deployment(project, name)
            if deployment is None:
                raise PredictError(404, f"no active deployment {name!r}", "name")
            body = await _body(receive, headers)
            try:  # strict JSON: NaN/Infinity tokens refused; nesting too deep for the parser is a bad body too
                doc = json.loads(body, parse_constant=_not_json)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise PredictError(400, "the body is not valid JSON", "body") from None
            if not isinstance(doc, dict) or set(doc) - {"instances", "key"}:
                raise PredictError(422, "body: an object with `instances` and an optional `key`", "body")
            key = doc.get("key")
            if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 256):
                raise PredictError(422, "key: a string of 1 to 256 characters", "key")
            variant = deployment.router.choose(key)
            loaded = deployment.variants[variant]
            model, version = loaded.model, loaded.version
            async with self.running:
                X, result = await asyncio.get_running_loop().run_in_executor(self.pool, _infer, loaded,
                                                                             doc.get("instances"))
            rows = len(X)
            if self.test_delays and (delay := self.test_delays.get((deployment.key, variant))):
                await asyncio.sleep(delay)
        except PredictError as e:
            status = e.status
            extra = [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
            await _send(send, status, PROBLEM + extra + ids, _problem(status, e.detail, e.field, scope["path"],
                                                                       request_id))
        except Exception as e:  # the model failed on this input: a 500 problem, counted; the server lives on
            status = 500
            log.exception("predict %s/%s failed", project, name)
            await _send(send, 500, PROBLEM + ids, _problem(500, f"prediction failed: {type(e).__name__}", None,
                                                           scope["path"], request_id))
        else:
            status = 200
            first = first_row(result)
            result.update(deployment=name, revision=deployment.revision, variant=variant, model=model,
                          version=version, request_id=request_id)
            if correlation_id is not None:
                result["correlation_id"] = correlation_id
            await _send(send, 200, JSON + ids, result)
            if deployment.shadow is not None:
                self._shadow(deployment, X, request_id)
        if deployment is not None:
            self.telemetry.record(request_id, deployment.key, deployment.revision, variant, model, version, status,
                                  (time.perf_counter_ns() - started) // 1000, rows, False, first)

    def _shadow(self, deployment: LiveDeployment, X: Any, request_id: str) -> None:
        if self.shadow_queue is None:
            self.shadow_queue = asyncio.Queue(self.shadow_queue_size)
        try:
            self.shadow_queue.put_nowait((deployment, X, request_id))
        except asyncio.QueueFull:
            self.shadow_dropped += 1

    async def run_shadows(self, stop: asyncio.Event) -> None:
        """Answers the shadow copies on a worker thread, one at a time, and records them (`shadow` true)."""
        if self.shadow_queue is None:
            self.shadow_queue = asyncio.Queue(self.shadow_queue_size)
        while not stop.is_set():
            try:
                deployment, X, request_id = await asyncio.wait_for(self.shadow_queue.get(), 0.5)
            except TimeoutError:
                continue
            shadow = deployment.shadow
            started, status, first = time.perf_counter_ns(), 200, NOTHING
            try:
                async with self.running:
                    out = await asyncio.get_running_loop().run_in_executor(self.pool, shadow.run, X)
                first = first_row(answer(shadow, out[:1]))
            except Exception:
                status = 500
            self.telemetry.record(request_id, deployment.key, deployment.revision, "shadow", shadow.model,
                                  shadow.version, status, (time.perf_counter_ns() - started) // 1000, len(X), True,
                                  first)

    # ---- what it serves ----------------------------------------------------------------------------------
    def describe(self, key: KeyState) -> list[dict[str, Any]]:
        """The deployments served now that `key` may call (its project's only)."""
        return [{"name": d.name, "revision": d.revision, "weights": d.router.weights,
                 "variants": {n: {"model": m.model, "version": m.version} for n, m in d.variants.items()},
                 "shadow": {"model": d.shadow.model, "version": d.shadow.version} if d.shadow else None}
                for d in self.state.reach(key)]

    def readiness(self, key: KeyState | None = None) -> dict[str, Any]:
        """Ready or not and how many deployments are served; with a live `key`, also the stages, the telemetry
        buffer and the deployments (and load errors) the key reaches."""
        ready = self.health.healthy() if self.health is not None else True
        report: dict[str, Any] = {"ready": ready, "deployments": len(self.state.deployments)}
        if key is None:
            return report
        report["stages"] = self.health.snapshot() if self.health is not None else {}
        report["deployments"] = {d.name: d.revision for d in self.state.reach(key)}
        report["deployment_errors"] = self.state.errors_in_reach(key)
        report["telemetry"] = {"buffered": len(self.telemetry), "published": self.telemetry.published,
                               "dropped": self.telemetry.dropped, "shadow_dropped": self.shadow_dropped}
        return report


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _infer(model: LoadedModel, instances: Any) -> tuple[Any, dict[str, Any]]:
    """The rows and the answer (on a worker thread: rows_of and the session run are the request's CPU work)."""
    X = rows_of(instances, model)
    return X, answer(model, model.run(X))


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _api_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() or None if key is not None else None


async def _body(receive: Any, headers: dict[bytes, bytes]) -> bytes:
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise PredictError(413, f"the body is over {MAX_BODY_BYTES:,} bytes", "body")
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PredictError(413, f"the body is over {MAX_BODY_BYTES:,} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _problem(status: int, detail: str, field: str | None, instance: str, request_id: str | None = None) -> dict:
    titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
              413: "Content too large", 422: "Invalid request", 429: "Too many requests", 500: "Internal error"}
    out: dict[str, Any] = {"type": "about:blank", "title": titles.get(status, "Error"), "status": status,
                           "detail": printable(detail, 1000), "instance": printable(instance, 300)}
    if field:
        out["field"] = printable(field, 300)
    if request_id:
        out["request_id"] = request_id
    return out


async def _send(send: Any, status: int, headers: list, body: dict) -> None:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def parse_test_delays(text: str | None) -> dict[tuple[str, str], float]:
    """"deployment/variant=ms,…" → {(deployment, variant): seconds} (Settings.inference_test_delay); the deployment
    is its scoped key ("project/name" outside the default project)."""
    out: dict[tuple[str, str], float] = {}
    for part in (text or "").split(","):
        if part.strip():
            target, _, ms = part.partition("=")
            deployment, _, variant = target.strip().rpartition("/")
            out[(deployment, variant)] = float(ms) / 1000
    return out
