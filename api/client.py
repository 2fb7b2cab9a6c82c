"""A small Python client for the REST API (the CLI uses it too).

    with TrainyardClient() as ty:
        job_id = ty.submit({...})["job_id"]
        print(ty.wait(job_id)["final_metrics"])

Every failure is a `TrainyardError` whose str() is one line: an error answer (`status`, the problem+json
`problem`), or `TrainyardUnavailable` when the API cannot be reached at all.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

FINISHED = ("completed", "failed", "cancelled")


def _one_line(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TrainyardError(Exception):
    """The API answered with an error: `status` and its problem+json body `problem` (title, detail, field)."""

    def __init__(self, status: int | None, problem: dict[str, Any], message: str | None = None) -> None:
        self.status, self.problem = status, problem
        self.title, self.detail, self.field = problem.get("title"), problem.get("detail"), problem.get("field")
        if message is None:  # "404 Not found: no training job 3f2a… (field job_id)"
            message = " ".join(str(x) for x in (status, self.title) if x) or "error"
            if self.detail:
                message += f": {self.detail}"
            if self.field:
                message += f" (field {self.field})"
        super().__init__(_one_line(message))

    @property
    def retryable(self) -> bool:
        """Worth retrying: the API is unreachable or answered 5xx (restarting, overloaded, not ready)."""
        return self.status is None or self.status >= 500


class TrainyardUnavailable(TrainyardError):
    """The API could not be reached (connection refused, timeout, reset, bad address): no answer at all."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(None, {"title": "Unavailable", "detail": reason},
                         f"cannot reach the Trainyard API at {url} ({reason}); is 'trainyard up' running?")


def _reason(e: Exception) -> str:
    """'[Errno 111] Connection refused' -> 'connection refused'."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(e)).strip().rstrip(".") or type(e).__name__
    return text[0].lower() + text[1:]


def default_api_url(data_dir: Path | None = None) -> str:
    """TRAINYARD_API_URL, else what `trainyard up` wrote to <data dir>/endpoints.json, else :8000."""
    if url := os.environ.get("TRAINYARD_API_URL"):
        return url
    endpoints = (data_dir or Path(os.environ.get("TRAINYARD_DATA_DIR", ".trainyard"))) / "endpoints.json"
    if endpoints.exists():
        return json.loads(endpoints.read_text())["api"]
    return "http://127.0.0.1:8000"


def _job_path(job_id: Any) -> str:
    """The job's URL path; a job id that is not a UUID fails here, as the API would (422, field job_id)."""
    try:
        return f"/api/v1/training/jobs/{uuid.UUID(str(job_id))}"
    except ValueError:
        raise TrainyardError(422, {"title": "Invalid request", "field": "job_id",
                                   "detail": f"{str(job_id)!r} is not a job id (a UUID)"}) from None


def _study_path(study_id: Any) -> str:
    try:
        return f"/api/v1/studies/{uuid.UUID(str(study_id))}"
    except ValueError:
        raise TrainyardError(422, {"title": "Invalid request", "field": "study_id",
                                   "detail": f"{str(study_id)!r} is not a study id (a UUID)"}) from None


STUDY_ENDED = ("completed", "cancelled", "failed")


class TrainyardClient:
    def __init__(self, base_url: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url or default_api_url()
        try:
            self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        except httpx.InvalidURL as e:
            raise TrainyardUnavailable(self.base_url, f"invalid URL: {e}") from None

    def __enter__(self) -> TrainyardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except (httpx.TransportError, httpx.InvalidURL) as e:
            raise TrainyardUnavailable(self.base_url, _reason(e)) from None

    @staticmethod
    def _body(r: httpx.Response) -> Any:
        try:
            return r.json()
        except ValueError:
            detail = _one_line(r.text, 200) or "an empty answer, not JSON"
            raise TrainyardError(r.status_code, {"title": r.reason_phrase or "Error", "detail": detail}) from None

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._request(method, path, **kw)
        body = self._body(r)
        if r.status_code >= 400:
            raise TrainyardError(r.status_code, body if isinstance(body, dict) else {"detail": body})
        return body

    def submit(self, job: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """{"job_id", "status", "created_at"}"""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/api/v1/training/jobs", json=job, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", _job_path(job_id))

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/api/v1/training/jobs", params={k: v for k, v in filters.items() if v is not None})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", _job_path(job_id))

    def metrics(self, job_id: str) -> dict[str, Any]:
        """{"names": [...], "latest": {name: {"step", "value"}}}"""
        return self._call("GET", f"{_job_path(job_id)}/metrics")

    def metric(self, job_id: str, name: str, max_points: int = 1000) -> dict[str, Any]:
        path = f"{_job_path(job_id)}/metrics/{quote(name, safe='')}"
        return self._call("GET", path, params={"max_points": max_points})

    def wait(self, job_id: str, timeout: float = 600.0, interval: float = 1.0) -> dict[str, Any]:
        """Poll until the job is completed, failed or cancelled; return it. Rides out an API restart
        (no connection, 5xx) until `timeout`; raises TimeoutError when the job is still going then."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self.job(job_id)
                if job["status"] in FINISHED:
                    return job
                state = job["status"]
            except TrainyardError as e:
                if not e.retryable or time.monotonic() >= deadline:
                    raise
                state = "unknown (API unavailable)"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {state} after {timeout:g} s")
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    # ---- studies -------------------------------------------------------------------------------------
    def create_study(self, study: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """{"study_id", "status", "created_at"}"""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/api/v1/studies", json=study, headers=headers)

    def study(self, study_id: str) -> dict[str, Any]:
        """status, counts per trial state, best_trial, the spec."""
        return self._call("GET", _study_path(study_id))

    def studies(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/api/v1/studies", params={k: v for k, v in filters.items() if v is not None})

    def trials(self, study_id: str, **filters: Any) -> dict[str, Any]:
        return self._call("GET", f"{_study_path(study_id)}/trials",
                          params={k: v for k, v in filters.items() if v is not None})

    def study_history(self, study_id: str) -> dict[str, Any]:
        return self._call("GET", f"{_study_path(study_id)}/history")

    def importances(self, study_id: str) -> dict[str, Any]:
        return self._call("GET", f"{_study_path(study_id)}/importances")

    def cancel_study(self, study_id: str) -> dict[str, Any]:
        return self._call("DELETE", _study_path(study_id))

    def compare(self, job_ids: list[str], metric: str = "valid_loss", max_points: int = 1000) -> dict[str, Any]:
        return self._call("GET", "/api/v1/experiments/compare",
                          params={"job_ids": ",".join(job_ids), "metric": metric, "max_points": max_points})

    def wait_study(self, study_id: str, timeout: float = 3600.0, interval: float = 1.0) -> dict[str, Any]:
        """Poll until the study is completed, cancelled or failed; rides out an API restart until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                study = self.study(study_id)
                if study["status"] in STUDY_ENDED:
                    return study
            except TrainyardError as e:
                if not e.retryable or time.monotonic() >= deadline:
                    raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"study {study_id} is still going after {timeout:g} s")
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def ready(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz: (200 or 503, {"ready", "checks", "stages"}). A 503 is an answer, not an error."""
        r = self._request("GET", "/readyz")
        body = self._body(r)
        if r.status_code not in (200, 503) or not isinstance(body, dict):
            raise TrainyardError(r.status_code, body if isinstance(body, dict) else {"detail": body})
        return r.status_code, body

    def close(self) -> None:
        self.http.close()
