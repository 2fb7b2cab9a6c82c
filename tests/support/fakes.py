"""Stand-ins at the edges, for tests that need no engines.

Two fake Trainyard APIs, for two kinds of test, answering through the API's own response models and the same
problem+json errors:
- `FakeApi`, a real HTTP server holding jobs in memory, for what needs a socket: stop and restart it, refuse
  connections, answer 503 or 404 for a while (the CLI's watch and retries);
- `Script`, an `httpx.MockTransport` that expects exactly the listed requests, in order, and answers each (the
  CLI commands and client methods that must send the right requests).
And `QuietReporter`, a trainer's reporter that records nothing and never stops.
"""
from __future__ import annotations

import json
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.schemas.jobs import JobIn, JobPublic, MetricNames
from domain.vocabulary import JobStatus
from tests.support.waiting import eventually

JOBS = "/api/v1/training/jobs"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # the fake's artifact digest
API = "http://api.test:8000"  # where a `Script`'s relative paths point
ANY = object()  # a Step body: not checked
INTERRUPT = object()  # a Step answer: the "user" presses Ctrl-C during this request


def free_port() -> int:
    """A port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def problem(status: int, title: str, detail: str, field: str | None = None,
            instance: str | None = None) -> dict[str, Any]:
    """A problem+json body as the API writes it."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail,
            **({"instance": instance} if instance else {}), **({"field": field} if field else {})}


def _problem_response(request: Request, status: int, title: str, detail: str,
                      field: str | None = None) -> JSONResponse:
    return JSONResponse(problem(status, title, detail, field, instance=request.url.path), status_code=status,
                        media_type="application/problem+json")


class FakeApi:
    """The Trainyard API's job routes and answers, with jobs held in memory; `unavailable` makes the next job reads
    answer 503 (as during a start), `ready` is what /readyz answers. Serves on a fixed port so it can restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jobs: dict[UUID, dict[str, Any]] = {}
        self.latest: dict[UUID, dict[str, Any]] = {}
        self.reads = 0  # job reads answered 200
        self.listings = 0  # job lists answered
        self.unavailable = 0
        self.behind = 0  # the next reads of a known job answer 404, as while the jobs read model catches up
        self.ready: tuple[int, dict[str, Any]] = (200, {"ready": True, "checks": {}, "stages": {}})
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.app = self._app()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
            e = exc.errors()[0]
            field = ".".join(str(x) for x in e["loc"] if x not in ("body", "query", "path", "header"))
            return _problem_response(request, 422, "Invalid request", f"{field}: {e['msg']}", field)

        def known(request: Request, job_id: UUID) -> dict[str, Any] | JSONResponse:
            if self.unavailable:
                self.unavailable -= 1
                return _problem_response(request, 503, "Service Unavailable", "the API is starting")
            if job_id not in self.jobs or self.behind:
                self.behind = max(0, self.behind - 1)
                return _problem_response(request, 404, "Not found", f"no training job {job_id}", "job_id")
            return self.jobs[job_id]

        @app.post(JOBS, status_code=202)
        def submit(body: JobIn) -> dict[str, Any]:
            job = self.add(name=body.name, framework=body.framework, task=body.task, params=body.params,
                           dataset=body.dataset.model_dump(exclude_none=True))
            return {"job_id": job["job_id"], "status": job["status"], "created_at": job["created_at"]}

        @app.get(JOBS)
        def listing(status: JobStatus | None = None, limit: int = 50, offset: int = 0,
                    id_prefix: str | None = None) -> dict[str, Any]:
            items = [j for j in self.jobs.values() if status in (None, j["status"])
                     and UUID(j["job_id"]).hex.startswith(id_prefix or "")]
            self.listings += 1
            return {"items": items[offset:offset + limit], "total": len(items), "limit": limit, "offset": offset}

        @app.get(JOBS + "/{job_id}", response_model=JobPublic)
        def get(request: Request, job_id: UUID) -> Any:
            found = known(request, job_id)
            self.reads += not isinstance(found, JSONResponse)
            return found

        @app.delete(JOBS + "/{job_id}", status_code=202, response_model=JobPublic)
        def cancel(request: Request, job_id: UUID) -> Any:
            found = known(request, job_id)
            if isinstance(found, dict) and found["status"] in ("completed", "failed", "cancelled"):
                return _problem_response(request, 409, "Conflict", f"job {job_id} is already {found['status']}")
            return found

        @app.get(JOBS + "/{job_id}/metrics", response_model=MetricNames)
        def metrics(request: Request, job_id: UUID) -> Any:
            found = known(request, job_id)
            if isinstance(found, JSONResponse):
                return found
            latest = self.latest.get(job_id, {})
            return {"job_id": job_id, "names": sorted(latest), "latest": latest}

        @app.get("/readyz")
        def readyz() -> JSONResponse:
            return JSONResponse(self.ready[1], status_code=self.ready[0])

        return app

    def add(self, status: str = "queued", **fields: Any) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        job = {"job_id": str(uuid.uuid4()), "name": "bc", "framework": "lightgbm", "task": "binary_classification",
               "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 20}, "priority": "medium",
               "tags": [], "status": status, "attempt": 1 if status != "queued" else 0, "runner_id": None,
               "progress": {"current_step": 0, "total_steps": 20, "percentage_complete": 0.0, "elapsed_s": None,
                            "eta_s": None},
               "cancel_requested": False, "final_metrics": {}, "artifact": None, "error": None,
               "created_at": now.isoformat(), "updated_at": now.isoformat(), "started_at": None,
               "finished_at": None, "version": 1, **fields}
        JobPublic.model_validate(job)  # the real API's shape
        self.jobs[UUID(job["job_id"])] = job
        return job

    def run(self, job: dict[str, Any], steps: int) -> None:
        start = datetime.fromisoformat(job["created_at"]) + timedelta(seconds=0.4)
        job.update(status="running", attempt=1, runner_id="runner-1", started_at=start.isoformat(),
                   progress={"current_step": steps, "total_steps": 20, "percentage_complete": steps * 5.0,
                             "elapsed_s": 1.0, "eta_s": 1.0})
        self.latest[UUID(job["job_id"])] = {"valid_logloss": {"step": steps, "value": 0.25},
                                            "valid_auc": {"step": steps, "value": 0.97}}

    def complete(self, job: dict[str, Any]) -> None:
        self.run(job, 20)
        end = datetime.fromisoformat(job["started_at"]) + timedelta(seconds=2.5)
        job.update(status="completed", finished_at=end.isoformat(), final_metrics={"auc": 0.991, "logloss": 0.09},
                   artifact={"uri": "file:///data/artifacts/model.txt", "sha256": SHA, "size_bytes": 48_213},
                   progress={**job["progress"], "eta_s": 0.0})

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

        def started() -> bool:
            if self.server is not None and self.server.started:
                return True
            assert self.thread is not None and self.thread.is_alive(), "the fake API did not start"
            return False

        eventually(started, timeout=10, interval=0.02, message="the fake API did not start")

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


@dataclass
class Step:
    """One request a `Script` expects, and its answer."""
    method: str
    url: str  # API path, or an absolute URL
    body: Any = None  # the JSON body it must send (None: none; ANY: not checked)
    status: int = 200
    answer: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # headers it must send


class Script:
    """An httpx transport that expects exactly these requests, in this order, and answers each."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self.steps, f"unexpected request {request.method} {request.url}"
        step = self.steps.pop(0)
        self.requests.append(request)
        url = step.url if step.url.startswith("http") else API + step.url
        assert (request.method, str(request.url.copy_with(query=None))) == (step.method, url)
        assert dict(request.url.params) == step.params
        if step.body is not ANY:
            assert (json.loads(request.content) if request.content else None) == step.body
        for name, value in step.headers.items():
            assert request.headers.get(name) == value, f"header {name}: {request.headers.get(name)!r}"
        if step.answer is INTERRUPT:
            raise KeyboardInterrupt
        content_type = "application/problem+json" if step.status >= 400 else "application/json"
        return httpx.Response(step.status, json=step.answer, headers={"content-type": content_type})

    def done(self) -> None:
        assert not self.steps, f"requests not made: {[(s.method, s.url) for s in self.steps]}"


class QuietReporter:
    """A trainer's progress reporter that keeps nothing and never asks to stop."""

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False
