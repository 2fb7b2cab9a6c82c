"""A small Python client for the REST API (the CLI uses it too).

    with TrainyardClient() as ty:
        job_id = ty.submit({...})["job_id"]
        print(ty.wait(job_id)["final_metrics"])

Every failure is a `TrainyardError` whose str() is one line: an error answer (`status`, the problem+json
`problem`), or `TrainyardUnavailable` when the API cannot be reached at all.

The model registry, ONNX exports, deployments (with their online A/B report, feedback and policy) and inference
API keys are here too; `predict` calls the inference server (a separate base URL, `inference_url`) with an
inference API key:

    with TrainyardClient(api_key="ty_...") as ty:
        ty.predict("churn", [[0.1, 2.0, 3.5]])["predictions"]

Every request carries `Authorization: Bearer <token>`: `token`, else TRAINYARD_TOKEN, else what `trainyard login`
stored for the API URL, else the first owner's token in <data dir>/admin-token (the machine that ran `trainyard
up`); and the project it acts in (`X-Trainyard-Project`): `project`, TRAINYARD_PROJECT or the stored one. The
identity methods (login, me, users, service accounts, API tokens, projects and members) are here too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from api import sse
from api.code_pack import pack_directory
from domain.vocabulary import FINISHED, STUDY_ENDED



Stream = tuple[str, str | None, Any]  # a live stream's message: (event, id, data)


def _one_line(text: Any, limit: int | None = None) -> str:
    """The text on one line; cut to `limit` characters only when given (an API's problem never is: its field
    and reason come last)."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


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



class Patience:
    """How long a caller rides out failures (a live view, a stream): `failed(e)` hands an error it tolerates to
    `on_error(error, seconds_left)` and returns the seconds left (None: no limit); it raises the error when
    `tolerate` refuses it or the failures have lasted `patience` seconds. `ok()`: a success resets the clock."""

    def __init__(self, patience: float | None, tolerate: Callable[[TrainyardError], bool],
                 on_error: Callable[[TrainyardError, float | None], None] | None) -> None:
        self.patience, self.tolerate, self.on_error = patience, tolerate, on_error
        self.down_since: float | None = None

    def ok(self) -> None:
        self.down_since = None

    def failed(self, error: TrainyardError) -> float | None:
        now = time.monotonic()
        self.down_since = now if self.down_since is None else self.down_since
        left = None if self.patience is None else self.patience - (now - self.down_since)
        if not self.tolerate(error) or (left is not None and left <= 0):
            raise error
        if self.on_error is not None:
            self.on_error(error, left)
        return left

class TrainyardUnavailable(TrainyardError):
    """The API could not be reached (connection refused, timeout, reset, bad address): no answer at all."""

    def __init__(self, url: str, reason: str, what: str = "the Trainyard API") -> None:
        self.url, self.reason = url, reason
        super().__init__(None, {"title": "Unavailable", "detail": reason},
                         f"cannot reach {what} at {url} ({reason}); is 'trainyard up' running?")


class StreamNotServed(TrainyardError):
    """The API has no such stream route (a server older than live streams): a 404 that names no field, where a
    missing object's 404 names its id's field. Poll instead."""


class StreamBroken(TrainyardError):
    """The stream's bytes are not ours (a message that is not JSON, one over its bound): reconnecting would read
    the same again, so it is not retried."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, {"title": "Invalid stream", "detail": detail})

    @property
    def retryable(self) -> bool:
        return False


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


def credentials_file() -> Path:
    """Where `trainyard login` keeps credentials, per API URL: $TRAINYARD_CREDENTIALS, else
    $XDG_CONFIG_HOME/trainyard/credentials.json (~/.config/…); mode 0600."""
    if given := os.environ.get("TRAINYARD_CREDENTIALS"):
        return Path(given)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "trainyard" / "credentials.json"


def stored_credentials(api_url: str) -> dict[str, Any]:
    """What `trainyard login` stored for `api_url` ({"token", "principal", "project"?}), or {}."""
    try:
        entry = json.loads(credentials_file().read_text()).get(api_url.rstrip("/"), {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entry if isinstance(entry, dict) else {}


def default_token(api_url: str, data_dir: Path | None = None) -> str | None:
    """TRAINYARD_TOKEN, else what `trainyard login` stored for this API, else the first owner's token that
    `trainyard up` wrote to <data dir>/admin-token (on the machine that runs it)."""
    if token := os.environ.get("TRAINYARD_TOKEN"):
        return token
    if token := stored_credentials(api_url).get("token"):
        return str(token)
    path = (data_dir or Path(os.environ.get("TRAINYARD_DATA_DIR", ".trainyard"))) / "admin-token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def token_source(api_url: str, data_dir: Path | None = None) -> str | None:
    """Where `default_token` finds the token it sends (in the same order): "TRAINYARD_TOKEN", the login stored in
    credentials_file(), the admin-token file; None when there is none. For messages that say which credential
    the API refused."""
    if os.environ.get("TRAINYARD_TOKEN"):
        return "TRAINYARD_TOKEN"
    if stored_credentials(api_url).get("token"):
        return f"the login stored in {credentials_file()}"
    path = (data_dir or Path(os.environ.get("TRAINYARD_DATA_DIR", ".trainyard"))) / "admin-token"
    try:
        return f"the owner's token in {path}" if path.read_text().strip() else None
    except OSError:
        return None


def save_credentials(api_url: str, entry: dict[str, Any] | None) -> Path:
    """Store (None: remove) what `trainyard login` keeps for `api_url` in credentials_file(), beside the other
    APIs' entries. The folder is made 0700 and the file is replaced whole at 0600 (it holds API tokens): written
    to a new file created with that mode, then renamed over the old one, so no reader sees half of it and a file
    once left readable by others is not reused. Returns the file."""
    path = credentials_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    key = api_url.rstrip("/")
    if entry is None:
        data.pop(key, None)
    else:
        data[key] = entry
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(temp, 0o600)  # whatever the umask
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def default_project(api_url: str) -> str | None:
    """TRAINYARD_PROJECT, else the project `trainyard project use` stored; None: the server's default."""
    return os.environ.get("TRAINYARD_PROJECT") or stored_credentials(api_url).get("project") or None


def default_inference_url(data_dir: Path | None = None) -> str:
    """TRAINYARD_INFERENCE_URL, else the "inference" entry of <data dir>/endpoints.json, else :8001."""
    if url := os.environ.get("TRAINYARD_INFERENCE_URL"):
        return url
    endpoints = (data_dir or Path(os.environ.get("TRAINYARD_DATA_DIR", ".trainyard"))) / "endpoints.json"
    try:
        url = json.loads(endpoints.read_text()).get("inference") if endpoints.exists() else None
    except (OSError, ValueError, AttributeError):
        url = None
    return url if isinstance(url, str) and url else "http://127.0.0.1:8001"


UPLOAD_TIMEOUT_S = 600.0  # a code bundle of up to 100 MiB, checked member by member before the answer


def _bundle_bytes(source: str | Path | bytes) -> tuple[bytes, str]:
    """(the archive's bytes, a file name to send) for a folder (packed), an archive file, or bytes."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "bundle"
    path = Path(source)
    if path.is_dir():
        return pack_directory(path), f"{path.resolve().name or 'bundle'}.tar.gz"
    try:
        return path.read_bytes(), path.name
    except OSError as e:
        raise TrainyardError(None, {"title": "Invalid input", "detail": f"{path}: {e.strerror or e}"}) from None


def _uuid(value: Any, field: str, what: str) -> str:
    """The UUID's text; anything else fails here, as the API would (422 naming the field)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise TrainyardError(422, {"title": "Invalid request", "field": field,
                                   "detail": f"{str(value)!r} is not {what} (a UUID)"}) from None


def _seg(text: Any) -> str:
    """One URL path segment (a model, alias, deployment or variant name), quoted."""
    return quote(str(text), safe="")


def _model_path(name: str) -> str:
    return f"/api/v1/models/{_seg(name)}"


def _version_path(name: str, version: int) -> str:
    return f"{_model_path(name)}/versions/{_seg(version)}"


def _deployment_path(name: str) -> str:
    return f"/api/v1/deployments/{_seg(name)}"


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


def _epoch_ms(value: int | datetime) -> int:
    """Epoch milliseconds from an int (already ms) or a datetime (naive: local time)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _ab_params(metric: str, **given: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"metric": metric}
    for key, value in given.items():
        if value is not None:
            params[key] = _epoch_ms(value) if key in ("since", "until") else value
    return params




class TrainyardClient:
    """`base_url`: the REST API; `inference_url` and `api_key`: the inference server and its key, for `predict`
    (defaults: TRAINYARD_INFERENCE_URL or :8001, TRAINYARD_API_KEY). `transport`: an httpx transport (tests)."""

    def __init__(self, base_url: str | None = None, timeout: float = 30.0, *, inference_url: str | None = None,
                 api_key: str | None = None, transport: httpx.BaseTransport | None = None,
                 token: str | None = None, project: str | None = None) -> None:
        self.base_url = base_url or default_api_url()
        self.inference_url = inference_url or default_inference_url()
        self.api_key = api_key if api_key is not None else os.environ.get("TRAINYARD_API_KEY")
        self.token = token if token is not None else default_token(self.base_url)
        self.project = project if project is not None else default_project(self.base_url)
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.project:
            headers["X-Trainyard-Project"] = self.project
        try:
            self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, headers=headers)
        except httpx.InvalidURL as e:
            raise TrainyardUnavailable(self.base_url, f"invalid URL: {e}") from None

    def __enter__(self) -> TrainyardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, server: tuple[str, str] | None = None,
                 **kw: Any) -> httpx.Response:
        """`server`: (its base URL, what it is) for the unreachable error, when `path` is an absolute URL
        of another server than the API (the inference server)."""
        try:
            return self.http.request(method, path, **kw)
        except (httpx.TransportError, httpx.InvalidURL) as e:
            url, what = server or (self.base_url, "the Trainyard API")
            raise TrainyardUnavailable(url, _reason(e), what) from None

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

    def retry_job(self, job_id: str, params: dict[str, Any] | None = None, priority: str | None = None,
                  from_checkpoint: bool = True, idempotency_key: str | None = None) -> dict[str, Any]:
        """Retry a failed or cancelled job: a new job with its spec, `params` merged over its params and `priority`
        (None: the original's). {"job_id", "status", "created_at"} of the new job, whose `retry_of` names this one."""
        body: dict[str, Any] = {"params": params or {}, "from_checkpoint": from_checkpoint}
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", f"{_job_path(job_id)}/retry", json=body, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", _job_path(job_id))

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/api/v1/training/jobs", params={k: v for k, v in filters.items() if v is not None})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", _job_path(job_id))

    def evaluation(self, job_id: str) -> dict[str, Any]:
        """The completed job's evaluation report (GET /api/v1/training/jobs/{id}/evaluation)."""
        return self._call("GET", f"{_job_path(job_id)}/evaluation")

    def metrics(self, job_id: str) -> dict[str, Any]:
        """{"names": [...], "latest": {name: {"step", "value"}}}"""
        return self._call("GET", f"{_job_path(job_id)}/metrics")

    def metric_series(self, job_id: str, names: list[str], max_points: int = 1000,
                      attempt: int | None = None) -> dict[str, Any]:
        """Several series in one request: {"names", "latest", "series": [{"name", "attempt", "points"}],
        "missing": [names without points]}; at most 20 names, none with a comma."""
        params: dict[str, Any] = {"names": ",".join(names), "max_points": max_points}
        if attempt is not None:
            params["attempt"] = attempt
        return self._call("GET", f"{_job_path(job_id)}/metrics", params=params)

    def metric(self, job_id: str, name: str, max_points: int = 1000) -> dict[str, Any]:
        path = f"{_job_path(job_id)}/metrics/{quote(name, safe='')}"
        return self._call("GET", path, params={"max_points": max_points})

    def logs(self, job_id: str, *, tail: int | None = None, limit: int | None = None, level: str | None = None,
             q: str | None = None, attempt: int | None = None, since: datetime | str | None = None,
             until: datetime | str | None = None, after: str | None = None) -> dict[str, Any]:
        """{"job_id", "lines": [{"attempt", "seq", "ts", "level", "stream", "message", "runner_id"}], "next_after"}:
        the job's log lines in order (`tail`: the last N; `after`: those after a `next_after`)."""
        given = {"tail": tail, "limit": limit, "level": level, "q": q, "attempt": attempt, "after": after,
                 **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in (("since", since), ("until", until))}}
        return self._call("GET", f"{_job_path(job_id)}/logs", params={k: v for k, v in given.items() if v is not None})

    def wait(self, job_id: str, timeout: float = 600.0, interval: float = 1.0) -> dict[str, Any]:
        """Poll until the job is completed, failed or cancelled; return it. Rides out an API restart
        (no connection, 5xx) until `timeout`; raises TimeoutError when the job is still going then."""
        return _until_finished(lambda: self.job(job_id), f"job {job_id}", timeout, interval)

    def stats(self, window: int | str | None = None) -> dict[str, Any]:
        """The queue and its capacity (GET /api/v1/stats): {"jobs": {queued, running, by_status, by_priority},
        "runners", "utilisation", "timings": [{framework, task, duration and queue wait mean/p95}]}. `window`: how
        far back the timings look (seconds, or "1h", "7d"; default 7 days)."""
        return self._call("GET", "/api/v1/stats", params={} if window is None else {"window": window})

    # ---- live streams --------------------------------------------------------------------------------
    def stream_job(self, job_id: str, from_: str | None = None, **follow: Any) -> Iterator[Stream]:
        """The job's live stream (GET …/stream) as (event, id, data): "status" (the job, as `job` shows it, on a
        change), "metrics" ({"points": [{name, attempt, step, value, ts}]}, each series in step order), "logs"
        ({"lines": [{attempt, seq, ts (ms), level, stream, message}]}), then "end" once the job has ended, and it
        stops. `from_`: a message id to resume after. `follow`: as `follow_stream`."""
        return self.follow_stream(f"{_job_path(job_id)}/stream", from_, **follow)

    def stream_study(self, study_id: str, from_: str | None = None, **follow: Any) -> Iterator[Stream]:
        """The study's live stream: "trial" (a trial asked, or its latest state), "best", "study" (the study as
        `study` shows it, after each change), then "end" once it has ended."""
        return self.follow_stream(f"{_study_path(study_id)}/stream", from_, **follow)

    def stream_deployment(self, name: str, from_: str | None = None, **follow: Any) -> Iterator[Stream]:
        """The deployment's live stream: "revision" (each revision, as `history` shows it), "evaluation" (the
        policy's latest); it never ends."""
        return self.follow_stream(f"{_deployment_path(name)}/stream", from_, **follow)

    def follow_stream(self, path: str, from_: str | None = None, *, patience: float | None = 60.0,
                      tolerate: Callable[[TrainyardError], bool] = lambda e: e.retryable,
                      on_error: Callable[[TrainyardError, float | None], None] | None = None) -> Iterator[Stream]:
        """An SSE stream's messages (event, id, data: parsed JSON) until "end" or the caller stops.

        A dropped connection, a stream closed before its end, or an error `tolerate` accepts (default: no answer or
        a 5xx) is handed to `on_error(error, seconds_left)` and the stream reopened with `Last-Event-ID` = the last
        id seen, so nothing is lost or repeated; the wait doubles from 0.5 s up to 5 s. Once the failures have
        lasted `patience` seconds (None: never), or for another error, it is raised; an open stream resets both.
        `StreamNotServed` (no such route) is raised at once."""
        last, delay, keeper = from_, 0.5, Patience(patience, tolerate, on_error)

        def connected() -> None:
            nonlocal delay
            delay = 0.5
            keeper.ok()

        while True:
            try:
                for event, message_id, data in self._stream_once(path, last, connected):
                    last = message_id or last
                    yield event, message_id, data
                    if event == "end":
                        return
                raise TrainyardUnavailable(self.base_url, "the stream closed before its end")
            except StreamNotServed:
                raise
            except TrainyardError as e:
                left = keeper.failed(e)
                time.sleep(delay if left is None else max(0.0, min(delay, left)))
                delay = min(delay * 2, 5.0)

    def _stream_once(self, path: str, last: str | None, connected: Callable[[], None]) -> Iterator[Stream]:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
        try:
            with self.http.stream("GET", path, headers=headers) as r:
                if r.status_code >= 400:
                    r.read()
                    body = self._body(r)
                    problem = body if isinstance(body, dict) else {"detail": body}
                    if r.status_code == 404 and not problem.get("field"):
                        raise StreamNotServed(404, problem)
                    raise TrainyardError(r.status_code, problem)
                connected()
                try:
                    for event, message_id, data in sse.messages(sse.lines(r.iter_bytes())):
                        try:
                            value = json.loads(data)
                        except ValueError:
                            raise StreamBroken(f"a {event!r} message is not JSON: {_one_line(data, 80)}") from None
                        yield event, message_id, value
                except sse.StreamTooLarge as e:
                    raise StreamBroken(str(e)) from None
        except (httpx.TransportError, httpx.InvalidURL) as e:
            raise TrainyardUnavailable(self.base_url, _reason(e)) from None

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

    # ---- model registry and ONNX exports ---------------------------------------------------------------
    def create_model(self, name: str, description: str = "", tags: list[str] | None = None) -> dict[str, Any]:
        """A registered model (409 when the name is taken)."""
        return self._call("POST", "/api/v1/models", json={"name": name, "description": description,
                                                           "tags": list(tags or [])})

    def models(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """{"items", "total", "limit", "offset"}"""
        return self._call("GET", "/api/v1/models", params={"limit": limit, "offset": offset})

    def model(self, name: str) -> dict[str, Any]:
        """name, description, tags, aliases (alias → version), latest_version ..."""
        return self._call("GET", _model_path(name))

    def register_version(self, name: str, job_id: str) -> dict[str, Any]:
        """Register a completed job's artifact as the model's next version; the version (its "version" number)."""
        return self._call("POST", f"{_model_path(name)}/versions", json={"job_id": _uuid(job_id, "job_id", "a job id")})

    def versions(self, name: str) -> dict[str, Any]:
        """{"items": [version, ...]}"""
        return self._call("GET", f"{_model_path(name)}/versions")

    def version(self, name: str, version: int) -> dict[str, Any]:
        """job_id, aliases, lineage, onnx (the serving artifact), parity, exports."""
        return self._call("GET", _version_path(name, version))

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point the alias at the version; the model."""
        return self._call("PUT", f"{_model_path(name)}/aliases/{_seg(alias)}", json={"version": version})

    def remove_alias(self, name: str, alias: str) -> dict[str, Any]:
        return self._call("DELETE", f"{_model_path(name)}/aliases/{_seg(alias)}")

    def export(self, name: str, version: int, tolerance: float | None = None) -> dict[str, Any]:
        """Ask for an ONNX export with a parity check (status "queued"); follow it with `wait_export`."""
        body: dict[str, Any] = {"format": "onnx"}
        if tolerance is not None:
            body["tolerance"] = tolerance
        return self._call("POST", f"{_version_path(name, version)}/exports", json=body)

    def get_export(self, name: str, version: int, export_id: str) -> dict[str, Any]:
        """status, attempt, artifact, parity (max_abs_diff, n_rows, metric_native, metric_onnx ...), error."""
        return self._call("GET", f"{_version_path(name, version)}/exports/"
                                 f"{_uuid(export_id, 'export_id', 'an export id')}")

    def wait_export(self, name: str, version: int, export_id: str, timeout: float = 600.0,
                    interval: float = 1.0) -> dict[str, Any]:
        """Poll until the export is completed, failed or cancelled; return it. Rides out an API restart until
        `timeout`; raises TimeoutError when it is still going then."""
        return _until_finished(lambda: self.get_export(name, version, export_id), f"export {export_id}", timeout,
                               interval)

    # ---- deployments ---------------------------------------------------------------------------------
    def deploy(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a deployment from {"name", "variants": [{"name", "model", "version" | "alias", "weight"}],
        "shadow"?, "reason"?}; the deployment at revision 1."""
        return self._call("POST", "/api/v1/deployments", json=spec)

    def deployments(self, active: bool | None = None) -> dict[str, Any]:
        """{"items": [deployment, ...]}"""
        params = {} if active is None else {"active": "true" if active else "false"}
        return self._call("GET", "/api/v1/deployments", params=params)

    def deployment(self, name: str) -> dict[str, Any]:
        """The current revision: variants (with weights), shadow, active."""
        return self._call("GET", _deployment_path(name))

    def history(self, name: str) -> dict[str, Any]:
        """{"name", "revisions": [...]}, oldest first."""
        return self._call("GET", f"{_deployment_path(name)}/history")

    def set_traffic(self, name: str, weights: dict[str, int], reason: str | None = None) -> dict[str, Any]:
        """New integer weights (summing to 100) for every variant: a new revision."""
        body: dict[str, Any] = {"weights": dict(weights)}
        if reason is not None:
            body["reason"] = reason
        return self._call("PATCH", f"{_deployment_path(name)}/traffic", json=body)

    def promote(self, name: str, variant: str, reason: str | None = None) -> dict[str, Any]:
        """The variant takes all the traffic: a new revision."""
        body: dict[str, Any] = {"variant": variant}
        if reason is not None:
            body["reason"] = reason
        return self._call("POST", f"{_deployment_path(name)}/promote", json=body)

    def retrain(self, name: str, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Retrain a variant of the deployment (POST …/retrain): the retrain as GET …/retrains/{id} shows it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", f"{_deployment_path(name)}/retrain", json=body, headers=headers)

    def retrains(self, name: str, retrain_id: str | None = None, **query: Any) -> dict[str, Any]:
        """The deployment's retrains ({"items", "total", …}), or one of them."""
        if retrain_id is not None:
            return self._call("GET", f"{_deployment_path(name)}/retrains/{_seg(retrain_id)}")
        return self._call("GET", f"{_deployment_path(name)}/retrains", params=query)

    def rollback(self, name: str, reason: str | None = None) -> dict[str, Any]:
        """A new revision equal to the one before the current."""
        return self._call("POST", f"{_deployment_path(name)}/rollback",
                          json={} if reason is None else {"reason": reason})

    def update_deployment(self, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
                          reason: str | None = None) -> dict[str, Any]:
        """Replace the variants and the shadow (none when not given): a new revision."""
        body: dict[str, Any] = {"variants": variants}
        if shadow is not None:
            body["shadow"] = shadow
        if reason is not None:
            body["reason"] = reason
        return self._call("PUT", _deployment_path(name), json=body)

    def undeploy(self, name: str, reason: str | None = None) -> dict[str, Any]:
        """Stop serving it (deactivated: it takes no further change)."""
        return self._call("DELETE", _deployment_path(name), params={} if reason is None else {"reason": reason})

    def prediction_stats(self, name: str, since_s: int = 3600) -> dict[str, Any]:
        """{"deployment", "items": [{revision, variant, model, version, shadow, requests, errors, p50_us ...}]}"""
        return self._call("GET", f"{_deployment_path(name)}/predictions", params={"since_s": since_s})

    # ---- online A/B comparison, feedback, policy -----------------------------------------------------
    def ab_report(self, name: str, metric: str = "accuracy", since: int | datetime | None = None,
                  until: int | datetime | None = None, revision: int | None = None) -> dict[str, Any]:
        """The A/B report (GET …/ab): {"deployment", "metric", "revision", "control", "window", "variants": [{name,
        weight, requests, errors, error_rate, labelled, latency_p50_ms/p95/p99, value, ci, ...}], "comparisons":
        [{challenger, difference, ci, p_value, decision, ...}], "shadow", "srm": {"mismatch", "revisions"},
        "method"}. `since`/`until`: epoch milliseconds or datetimes; `revision`: that revision's traffic only."""
        return self._call("GET", f"{_deployment_path(name)}/ab",
                          params=_ab_params(metric, since=since, until=until, revision=revision))

    def ab_timeseries(self, name: str, metric: str = "accuracy", bucket: int = 60,
                      since: int | datetime | None = None, until: int | datetime | None = None,
                      revision: int | None = None) -> dict[str, Any]:
        """Per `bucket`-second bucket (GET …/ab/timeseries): {"deployment", "metric", "bucket_s", "control", "points":
        [{"t_ms", "variants": {name: figures in the bucket}, "comparisons": {challenger: the comparison on
        everything up to the end of the bucket}}]}."""
        return self._call("GET", f"{_deployment_path(name)}/ab/timeseries",
                          params=_ab_params(metric, bucket=bucket, since=since, until=until, revision=revision))

    def feedback(self, name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Ground truth for earlier predictions: [{"request_id", "label" | "value"}] (up to 10,000 a call);
        {"received", "known", "unknown", "unknown_request_ids"}."""
        return self._call("POST", f"{_deployment_path(name)}/feedback", json=list(items))

    def set_policy(self, name: str, policy: dict[str, Any] | None, reason: str | None = None) -> dict[str, Any]:
        """Attach or change (a dict: metric, min_samples, min_lift, max_p_value, max_p99_latency_ms, max_error_rate,
        ramp, step_every_s) or remove (None) the automatic ramp/promote/rollback policy; the deployment."""
        body: dict[str, Any] = {"policy": None if policy is None else dict(policy)}
        if reason is not None:
            body["reason"] = reason
        return self._call("PUT", f"{_deployment_path(name)}/policy", json=body)

    # ---- inference API keys --------------------------------------------------------------------------
    def create_api_key(self, name: str, deployments: str | list[str] = "*",
                       rate_limit_per_s: float | None = None) -> dict[str, Any]:
        """A new inference key: the answer's "key" is the key itself, given this once (only its hash is kept)."""
        body: dict[str, Any] = {"name": name, "deployments": deployments if deployments == "*" else list(deployments)}
        if rate_limit_per_s is not None:
            body["rate_limit_per_s"] = rate_limit_per_s
        return self._call("POST", "/api/v1/api-keys", json=body)

    def api_keys(self, id_prefix: str | None = None) -> dict[str, Any]:
        """{"items": [{"id", "name", "prefix", "deployments", "rate_limit_per_s", "revoked_at" ...}]}; `id_prefix`:
        only the keys whose id starts with those 8 to 32 lowercase hex digits."""
        return self._call("GET", "/api/v1/api-keys", params={} if id_prefix is None else {"id_prefix": id_prefix})

    def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/api-keys/{_uuid(key_id, 'key_id', 'an API key id')}")

    # ---- code bundles ---------------------------------------------------------------------------------------
    def upload_code(self, source: str | Path | bytes, name: str | None = None) -> dict[str, Any]:
        """Upload a code bundle: `source` is a project folder (packed by `api.code_pack.pack_directory`, which
        honours .gitignore), a .tar.gz or .zip file, or an archive's bytes. {"code_id", "sha256", "files",
        "size_bytes", "unpacked_bytes", "format", "entrypoints", "filename", "created_at"}; the same bytes again
        answer the bundle already stored."""
        data, filename = _bundle_bytes(source)
        return self._upload_code(data, filename, name)

    def push_code(self, source: str | Path | bytes, name: str | None = None) -> tuple[dict[str, Any], bool]:
        """Upload `source` (as for `upload_code`) once per content: (the bundle, True) when it was uploaded now,
        (the bundle, False) when the project already has these bytes (asked by their code_id, nothing sent)."""
        data, filename = _bundle_bytes(source)
        sha = hashlib.sha256(data).hexdigest()
        try:
            found = self.get_code(sha[:32])
            if found.get("sha256") == sha:
                return found, False
        except TrainyardError as e:
            if e.status != 404:
                raise
        return self._upload_code(data, filename, name), True

    def _upload_code(self, data: bytes, filename: str, name: str | None) -> dict[str, Any]:
        return self._call("POST", "/api/v1/code", files={"file": (filename, data, "application/octet-stream")},
                          data={"name": name} if name else None, timeout=UPLOAD_TIMEOUT_S)

    def list_code(self) -> dict[str, Any]:
        """{"items": [...]}: the project's code bundles, newest first."""
        return self._call("GET", "/api/v1/code")

    def get_code(self, code_id: str) -> dict[str, Any]:
        if not isinstance(code_id, str) or not re.fullmatch(r"[0-9a-f]{32}", code_id):
            raise TrainyardError(422, {"title": "Invalid request", "field": "code_id",
                                       "detail": f"{str(code_id)!r} is not a code id (32 lowercase hex digits)"})
        return self._call("GET", f"/api/v1/code/{code_id}")

    # ---- identity: login, who am I, users and service accounts, API tokens, projects and members ---------
    def login(self, name: str, password: str) -> dict[str, Any]:
        """The OAuth2 password grant: {"access_token" (a short-lived JWT), "refresh_token", "expires_in",
        "token_type"}. A wrong name or password is a 401 (too many: 429)."""
        return self._call("POST", "/api/v1/auth/token",
                          data={"username": name, "password": password, "grant_type": "password"})

    def logout(self) -> None:
        """End the login session of the access token this client sends (an API token is revoked instead)."""
        r = self._request("POST", "/api/v1/auth/logout")
        if r.status_code >= 400:
            body = self._body(r)
            raise TrainyardError(r.status_code, body if isinstance(body, dict) else {"detail": body})

    def me(self) -> dict[str, Any]:
        """Who this client's credentials are: name, kind, owner, projects (name → role), project (the one this
        request acted in), scopes (a token's; null for a login)."""
        return self._call("GET", "/api/v1/me")

    def create_user(self, name: str, password: str, owner: bool = False) -> dict[str, Any]:
        """A new user (owners only); `owner`: the global owner role too."""
        return self._call("POST", "/api/v1/users", json={"name": name, "password": password, "owner": owner})

    def users(self) -> dict[str, Any]:
        """{"items": [{name, kind, owner, disabled, projects, created_at}], "total"}: users and service accounts."""
        return self._call("GET", "/api/v1/users")

    def disable_user(self, name: str, reason: str | None = None) -> dict[str, Any]:
        """Disable a user or service account: its tokens and sessions stop working; its history stays."""
        return self._call("DELETE", f"/api/v1/users/{_seg(name)}",
                          **({"json": {"reason": reason}} if reason is not None else {}))

    def create_service_account(self, name: str, description: str = "") -> dict[str, Any]:
        """A principal for scripts and CI (owners only); give it tokens with `create_token(..., principal=name)`."""
        return self._call("POST", "/api/v1/service-accounts", json={"name": name, "description": description})

    def create_token(self, name: str, scopes: list[str] | None = None, expires_in_days: float | None = 90,
                     principal: str | None = None) -> dict[str, Any]:
        """A new API token (`ty_…`) for yourself or (owners) a service account: the answer's "token" is the token,
        given this once (only its hash is kept). `scopes`: action patterns (default ["*"]); `expires_in_days`:
        None never expires."""
        body: dict[str, Any] = {"name": name, "expires_in_days": expires_in_days}
        if scopes is not None:
            body["scopes"] = list(scopes)
        if principal is not None:
            body["principal"] = principal
        return self._call("POST", "/api/v1/tokens", json=body)

    def tokens(self) -> dict[str, Any]:
        """{"items": [{id, principal, name, prefix, scopes, expires_at, revoked_at, ...}]}: your tokens (owners:
        everyone's), never the tokens themselves."""
        return self._call("GET", "/api/v1/tokens")

    def revoke_token(self, token_id: str, reason: str | None = None) -> dict[str, Any]:
        """Revoke an API token: every process refuses it within a second."""
        return self._call("DELETE", f"/api/v1/tokens/{_uuid(token_id, 'token_id', 'a token id')}",
                          **({"json": {"reason": reason}} if reason is not None else {}))

    def create_project(self, name: str, description: str = "") -> dict[str, Any]:
        """A new project (owners); its creator is its first admin."""
        return self._call("POST", "/api/v1/projects", json={"name": name, "description": description})

    def projects(self) -> dict[str, Any]:
        """{"items": [{name, description, quotas, created_by, created_at, role}], "total"}: the projects you can
        see (owners: all), with your role in each."""
        return self._call("GET", "/api/v1/projects")

    def get_project(self, name: str) -> dict[str, Any]:
        """One project you can see (404 otherwise), with your role in it. (Not `project`: that attribute is the
        project this client acts in.)"""
        return self._call("GET", f"/api/v1/projects/{_seg(name)}")

    def usage(self, project: str) -> dict[str, Any]:
        """{"project", "quotas": {name: {"limit" (null: unlimited), "used", "description"}}}"""
        return self._call("GET", f"/api/v1/projects/{_seg(project)}/usage")

    def set_quotas(self, project: str, quotas: dict[str, float | None], reason: str | None = None) -> dict[str, Any]:
        """Replace a project's quotas (project admins); a name left out or None: unlimited."""
        return self._call("PUT", f"/api/v1/projects/{_seg(project)}/quotas",
                          json={"quotas": quotas, "reason": reason})

    def members(self, project: str) -> dict[str, Any]:
        """{"items": [{principal, role, set_by, set_at}]}"""
        return self._call("GET", f"/api/v1/projects/{_seg(project)}/members")

    def set_member(self, project: str, who: str, role: str, reason: str | None = None) -> dict[str, Any]:
        """Give a user or service account a role in the project (viewer, engineer, deployer, admin); the members."""
        body: dict[str, Any] = {"role": role}
        if reason is not None:
            body["reason"] = reason
        return self._call("PUT", f"/api/v1/projects/{_seg(project)}/members/{_seg(who)}", json=body)

    def remove_member(self, project: str, who: str, reason: str | None = None) -> dict[str, Any]:
        """Take the principal out of the project; the members."""
        return self._call("DELETE", f"/api/v1/projects/{_seg(project)}/members/{_seg(who)}",
                          **({"json": {"reason": reason}} if reason is not None else {}))

    # ---- inference -----------------------------------------------------------------------------------
    def predict(self, name: str, instances: list[Any], key: str | None = None, api_key: str | None = None,
                inference_url: str | None = None, project: str | None = None) -> dict[str, Any]:
        """POST {inference_url}/v1/projects/{project}/deployments/{name}/predict (`project`, else this client's
        project; /v1/deployments/{name}/predict for the default project) with `Authorization: Bearer <api_key>`:
        {"predictions", "probabilities"?, "classes"?, "deployment", "revision", "variant", "model", "version",
        "request_id"}. `key` pins the variant choice (the same key, the same variant). The API key must be of that
        project (another project's deployment is 404)."""
        base = (inference_url or self.inference_url).rstrip("/")
        project = project if project is not None else self.project
        scope = f"/projects/{_seg(project)}" if project and project != "default" else ""
        api_key = api_key if api_key is not None else self.api_key
        body: dict[str, Any] = {"instances": instances}
        if key is not None:
            body["key"] = key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return self._call("POST", f"{base}/v1{scope}/deployments/{_seg(name)}/predict", json=body, headers=headers,
                          server=(base, "the inference server"))

    def ready(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz: (200 or 503, {"ready", "checks", "stages"}). A 503 is an answer, not an error."""
        r = self._request("GET", "/readyz")
        body = self._body(r)
        if r.status_code not in (200, 503) or not isinstance(body, dict):
            raise TrainyardError(r.status_code, body if isinstance(body, dict) else {"detail": body})
        return r.status_code, body

    def close(self) -> None:
        self.http.close()


def _until_finished(fetch: Any, what: str, timeout: float, interval: float) -> dict[str, Any]:
    """`fetch()` until its status is completed, failed or cancelled; rides out a retryable error (the API restarting)
    until `timeout`, then raises TimeoutError naming `what` and its last state."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            item = fetch()
            if item["status"] in FINISHED:
                return item
            state = item["status"]
        except TrainyardError as e:
            if not e.retryable or time.monotonic() >= deadline:
                raise
            state = "unknown (API unavailable)"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} is still {state} after {timeout:g} s")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
