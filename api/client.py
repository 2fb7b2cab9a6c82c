"""A small Python client for the REST API (the CLI uses it too)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx


class TrainyardError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', problem)}")
        self.status, self.problem = status, problem


def default_api_url(data_dir: Path | None = None) -> str:
    """TRAINYARD_API_URL, else what `trainyard up` wrote to <data dir>/endpoints.json, else :8000."""
    if url := os.environ.get("TRAINYARD_API_URL"):
        return url
    endpoints = (data_dir or Path(os.environ.get("TRAINYARD_DATA_DIR", ".trainyard"))) / "endpoints.json"
    if endpoints.exists():
        return json.loads(endpoints.read_text())["api"]
    return "http://127.0.0.1:8000"


class TrainyardClient:
    def __init__(self, base_url: str | None = None, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url or default_api_url(), timeout=timeout)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"detail": r.text}
            raise TrainyardError(r.status_code, problem)
        return r.json()

    def submit(self, job: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/api/v1/training/jobs", json=job, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/training/jobs/{job_id}")

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/api/v1/training/jobs", params={k: v for k, v in filters.items() if v is not None})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/training/jobs/{job_id}")

    def metrics(self, job_id: str) -> dict[str, Any]:
        """{"names": [...], "latest": {name: {"step", "value"}}}"""
        return self._call("GET", f"/api/v1/training/jobs/{job_id}/metrics")

    def metric(self, job_id: str, name: str, max_points: int = 1000) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/training/jobs/{job_id}/metrics/{name}", params={"max_points": max_points})

    def close(self) -> None:
        self.http.close()
