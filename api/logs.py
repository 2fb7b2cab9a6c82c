"""/api/v1/training/jobs/{id}/logs: a job's training logs (what it printed and logged, its traceback), read from
ClickHouse `log_lines` (projections/telemetry/log_store.py)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from api.auth import allow
from api.deps import ServicesDep
from api.jobs import visible_job
from api.limits import SafeText
from api.problems import Problem
from api.schemas.common import problems
from api.schemas.jobs import LogLinePublic, LogLines
from domain.contract import LogLevel
from projections.telemetry.log_store import LogQuery, StoredLine

router = APIRouter(prefix="/api/v1/training/jobs", tags=["training jobs"])
MAX_LINES = 10_000
PLAIN = {"text/plain": {"schema": {"type": "string"}, "example": "2026-01-01T12:00:00.123+00:00 INFO [stdout] "
                                                                  "[LightGBM] [Info] Total Bins 5676\n"}}


def plain_line(line: StoredLine) -> str:
    return f"{line.ts.isoformat(timespec='milliseconds')} {line.level.upper()} [{line.stream}] {line.message}"


def _cursor(after: str | None) -> tuple[int, int] | None:
    if after is None:
        return None
    attempt, seq = (int(part) for part in after.split(":"))
    if attempt > 2**31 - 1:
        raise Problem(422, "Invalid request", "after: its attempt is at most 2147483647", "after")
    return attempt, seq


@router.get("/{job_id}/logs", dependencies=[allow("job.read")], response_model=LogLines,
            responses={200: {"content": PLAIN}, **problems(404, 422)})
def job_logs(job_id: UUID, request: Request, s: ServicesDep,
             tail: Annotated[int | None, Query(ge=1, le=MAX_LINES, description="the last N matching lines "
                                                                                "(default: the first `limit`)")] = None,
             limit: Annotated[int, Query(ge=1, le=MAX_LINES, description="at most this many lines")] = 1000,
             since: Annotated[datetime | None, Query(description="lines at or after this time (ISO 8601; "
                                                                 "without a zone: UTC)")] = None,
             until: Annotated[datetime | None, Query(description="lines before this time")] = None,
             level: Annotated[LogLevel, Query(description="the least level shown")] = "debug",
             q: Annotated[SafeText | None, Query(min_length=1, max_length=200,
                                                 description="lines holding this text (case-sensitive)")] = None,
             attempt: Annotated[int | None, Query(ge=1, le=1_000_000, description="one run's lines")] = None,
             after: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9]{1,10}:[0-9]{1,18}$",
                                                description="lines after this one (\"attempt:seq\", a response's "
                                                            "`next_after`): how a follower asks for what is new")]
             = None) -> LogLines | PlainTextResponse:
    """The job's log lines in order. JSON, or with `Accept: text/plain` one line per log line:
    `ts LEVEL [stream] message`."""
    visible_job(s, job_id, request)  # visible first: another project's logs are as missing as its job
    if since is not None and until is not None and until <= since:
        raise Problem(422, "Invalid request", "until: must be later than since", "until")
    cursor = _cursor(after)
    lines = s.logs.lines(str(job_id), LogQuery(attempt=attempt, level=level, since=since, until=until, q=q or "",
                                               after=cursor, limit=tail or limit, tail=tail is not None))
    if "text/plain" in request.headers.get("accept", "") and "application/json" not in request.headers.get(
            "accept", ""):
        return PlainTextResponse("".join(plain_line(line) + "\n" for line in lines))
    last = f"{lines[-1].attempt}:{lines[-1].seq}" if lines else after
    return LogLines(job_id=job_id, lines=[LogLinePublic(**vars(line)) for line in lines], next_after=last)
