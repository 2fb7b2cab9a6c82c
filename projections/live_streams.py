"""What the live streams read: a stream is a small list of sources, each with its own position, read after it.

A `Source` reads its store (a read model, ClickHouse) after its position and returns messages; each message carries
the source's position after it. The stream's cursor is every source's position, encoded in each message's id
(`Cursor`), so a client that resumes from an id (SSE `Last-Event-ID`, `?from=`) gets what followed it: no loss, no
repeat. Sources never read the event store; adding one is adding an entry to `job_sources`.

Contract of a source (blocking; called from a worker thread, one call at a time per stream):
- `key`: its part of the cursor (short, unique in the stream); `token()`: its position as text;
  `seek(token)`: set the position from a token (CursorError when malformed);
- `read(pushed)`: messages after the position, in order, each of at most a page: `(event, data, token after it)`;
  the position moves to the last one's. An empty list: nothing new. `pushed`: the rows its topic's fan-out handed
  over since the last read (infra/fanout.py; None: some were not kept, or none are given). Sources of telemetry
  read them instead of ClickHouse once they have caught up with the store, so a live stream costs no query per
  insert; the others ignore them.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol
from uuid import UUID

from projections.deployments import DeploymentQueries
from projections.job_queries import JobQueries
from projections.studies import StudyQueries
from projections.telemetry.log_store import LogStore, StoredLine
from projections.telemetry.metric_store import TABLE as METRICS_TABLE, MetricStore

MAX_CURSOR_CHARS = 8192  # fits a header line with room to spare (servers refuse header blocks past ~16 KiB)
MAX_SERIES = 300  # metric series a cursor can hold (about 25 characters each)
PAGE = 1000  # metric points per message, trials per read
SETTLE_S = 3.0  # a job's stream ends this long after the job did, at the earliest (JobStatus.finished)
_CURSOR_RE = re.compile(r"^[a-z]=[0-9a-z.,]*(;[a-z]=[0-9a-z.,]*)*$")
Message = tuple[str, dict[str, Any], str]


class CursorError(ValueError):
    """A cursor (Last-Event-ID, ?from=) that is not one of ours."""


class Source(Protocol):
    key: str

    def token(self) -> str: ...

    def seek(self, token: str) -> None: ...

    def read(self, pushed: list | None = None) -> list[Message]: ...


def encode(positions: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in positions.items())


def decode(text: str, keys: Sequence[str]) -> dict[str, str]:
    """Source key -> token; CursorError for anything but the encoding of positions of these keys."""
    if len(text) > MAX_CURSOR_CHARS:
        raise CursorError(f"at most {MAX_CURSOR_CHARS} characters")
    if not _CURSOR_RE.match(text):
        raise CursorError("not a stream position (an id this stream sent)")
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, _, token = part.partition("=")
        if key not in keys or key in out:
            raise CursorError(f"unknown or repeated part {key!r}")
        out[key] = token
    return out


def _int(text: str, low: int = 0, high: int = 2**63 - 1) -> int:
    if not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        raise CursorError(f"{text[:40]!r} is not a position")
    return int(text)


def _json_number(v: float) -> float | str:
    """JSON has no NaN or infinities: they travel as the strings "nan", "inf", "-inf"."""
    return v if math.isfinite(v) else str(v)


def series_hash(name: str) -> str:
    """A metric name's 8 hex digits in the cursor (names may be long and hold any printable character)."""
    return hashlib.blake2b(name.encode(), digest_size=4).hexdigest()


class JobStatus:
    """`status` when the job's status, attempt or progress changed (data: the job as GET shows it). Position:
    "<read-model version>.<current step>". `finished` once the job has ended (its last status read)."""

    key = "s"

    def __init__(self, jobs: JobQueries, job_id: UUID, project: str) -> None:
        self.jobs, self.job_id, self.project = jobs, job_id, project
        self.position = (0, -1)
        self.job: dict[str, Any] | None = None

    def token(self) -> str:
        return f"{self.position[0]}.{self.position[1]}" if self.position[1] >= 0 else str(self.position[0])

    def seek(self, token: str) -> None:
        version, _, step = token.partition(".")
        self.position = (_int(version), _int(step) if step else -1)

    def read(self, pushed: list | None = None) -> list[Message]:
        job = self.jobs.get(self.job_id, project=self.project)
        if job is None:
            return []
        self.job = job
        now = (job["version"], job["progress"]["current_step"])
        if now == self.position:
            return []
        self.position = now
        return [("status", job, self.token())]

    @property
    def finished(self) -> bool:
        """The job has ended, long enough ago (SETTLE_S) that what its runner sent before its end has landed: the
        runner's last points and lines are in JetStream before it reports the end, but the projectors may insert
        them a moment after the job shows finished."""
        if self.job is None or self.job["status"] not in ("completed", "failed", "cancelled"):
            return False
        ended = self.job.get("finished_at")
        if isinstance(ended, str):
            ended = datetime.fromisoformat(ended)
        return ended is None or (datetime.now(timezone.utc) - ended).total_seconds() >= SETTLE_S


# Not FINAL (a third of the cost): a point stored twice and not yet merged comes back twice, and the second copy is
# dropped by the cursor. A point rewritten with another value may show its first value here.
_NEW_POINTS = f"""
SELECT name, attempt, step, value, toUnixTimestamp64Milli(ts) FROM {METRICS_TABLE}
WHERE job_id = {{job_id:UUID}}
  AND toInt64(step) > arrayElement(arrayPushFront({{after:Array(Int64)}}, -1),
                                   indexOf(arrayZip({{names:Array(String)}}, {{attempts:Array(UInt32)}}),
                                           (name, attempt)) + 1)
ORDER BY attempt, step, name LIMIT {{limit:UInt64}}"""


class MetricPoints:
    """`metrics`: new points of every series (data: {"points": [{name, attempt, step, value, ts}]}, at most a page,
    each series in step order). Position: per series (attempt, name), the last step sent, written
    "<attempt>.<name hash>.<step>" joined by ",". Reads ClickHouse until it has caught up, then the points the
    fan-out hands over (all of them since the stream subscribed, or None: then ClickHouse again)."""

    key = "m"

    def __init__(self, store: MetricStore, job_id: UUID) -> None:
        self.store, self.job_id = store, str(job_id)
        self.sent: dict[tuple[int, str], int] = {}  # (attempt, name hash) -> last step sent
        self.names: dict[str, str] = {}  # name hash -> name
        self.caught_up = False  # a store read has returned all there was: pushed points follow on from it

    def token(self) -> str:
        return ",".join(f"{a}.{h}.{s}" for (a, h), s in sorted(self.sent.items()))

    def seek(self, token: str) -> None:
        sent: dict[tuple[int, str], int] = {}
        for part in token.split(",") if token else []:
            attempt, h, step = (part.split(".") + ["", ""])[:3]
            if not re.fullmatch(r"[0-9a-f]{8}", h) or part.count(".") != 2:
                raise CursorError(f"{part[:40]!r} is not a series position")
            sent[(_int(attempt, 0, 2**32 - 1), h)] = _int(step)
        if len(sent) > MAX_SERIES:
            raise CursorError(f"at most {MAX_SERIES} series")
        self.sent = sent

    def read(self, pushed: list | None = None) -> list[Message]:
        """`pushed`: lists of (name, attempt, steps, values, ts_ms) chunks, what the metrics projector inserted."""
        if pushed is None or not self.caught_up:
            return self._read_store()
        rows = [(name, attempt, int(step), float(value), int(ts))
                for chunks in pushed for name, attempt, steps, values, ts_ms in chunks
                for step, value, ts in zip(steps, values, ts_ms)]
        rows.sort(key=lambda r: (r[1], r[2], r[0]))
        out = []
        for page in range(0, len(rows), PAGE):
            out += self._messages(rows[page:page + PAGE])
        return out

    def _read_store(self) -> list[Message]:
        if any(h not in self.names for _, h in self.sent):
            self.names = {series_hash(n): n for n in self.store.names(self.job_id)}
        keys = [(self.names[h], a) for a, h in self.sent if h in self.names]
        after = [self.sent[(a, series_hash(n))] for n, a in keys]
        rows = self.store.ch.query(_NEW_POINTS, {"job_id": self.job_id, "names": [n for n, _ in keys],
                                                 "attempts": [a for _, a in keys], "after": after, "limit": PAGE})
        self.caught_up = len(rows) < PAGE
        return self._messages(rows)

    def _messages(self, rows: list[tuple]) -> list[Message]:
        points = []
        for name, attempt, step, value, ts in rows:
            h = series_hash(name)
            self.names[h] = name
            if len(self.sent) >= MAX_SERIES and (attempt, h) not in self.sent:
                continue  # past what a cursor can hold: the stream shows the first MAX_SERIES series
            if step <= self.sent.get((attempt, h), -1):
                continue  # sent already: a second copy not yet merged away, or pushed and read both
            self.sent[(attempt, h)] = step
            points.append({"name": name, "attempt": attempt, "step": step, "value": _json_number(value), "ts": ts})
        return [("metrics", {"points": points}, self.token())] if points else []


class LogLines:
    """`logs`: new log lines (data: {"lines": [{attempt, seq, ts, level, stream, message}]}, at most a page, in
    (attempt, seq) order). Position: "<attempt>.<seq>" of the last line sent."""

    key = "l"

    def __init__(self, store: LogStore, job_id: UUID) -> None:
        self.store, self.job_id = store, str(job_id)
        self.after: tuple[int, int] | None = None
        self.caught_up = False  # as MetricPoints'

    def token(self) -> str:
        return "" if self.after is None else f"{self.after[0]}.{self.after[1]}"

    def seek(self, token: str) -> None:
        if not token:
            self.after = None
            return
        attempt, _, seq = token.partition(".")
        self.after = (_int(attempt, 0, 2**32 - 1), _int(seq))

    def read(self, pushed: list | None = None) -> list[Message]:
        """`pushed`: lists of StoredLine, what the logs projector inserted."""
        if pushed is None or not self.caught_up:
            lines = self.store.lines_after(self.job_id, self.after, PAGE)
            self.caught_up = len(lines) < PAGE
            return self._messages(lines)
        lines = sorted((ln for batch in pushed for ln in batch), key=lambda ln: (ln.attempt, ln.seq))
        out = []
        for page in range(0, len(lines), PAGE):
            out += self._messages(lines[page:page + PAGE])
        return out

    def _messages(self, lines: list[StoredLine]) -> list[Message]:
        new = []
        for ln in lines:
            if self.after is None or (ln.attempt, ln.seq) > self.after:
                new.append(ln)
                self.after = (ln.attempt, ln.seq)
        if not new:
            return []
        return [("logs", {"lines": [{"attempt": ln.attempt, "seq": ln.seq, "ts": _epoch_ms(ln.ts), "level": ln.level,
                                     "stream": ln.stream, "message": ln.message} for ln in new]}, self.token())]


def job_sources(jobs: JobQueries, metrics: MetricStore, logs: LogStore, job_id: UUID,
                project: str) -> list[Source]:
    """A job's stream: its status first (a finished job's points and lines are all stored before it shows
    finished, so reading them after the status that says so gets them all), then its points and log lines."""
    return [JobStatus(jobs, job_id, project), MetricPoints(metrics, job_id), LogLines(logs, job_id)]


_AFTER = {"b": 1, "e": 2}  # in a study position, after the trials of a version: its best ("b"), its state ("e")


class StudyProgress:
    """`trial` (a trial asked or its latest state), `best` (the best trial improved), `study` (status and
    counts), in the read model's version order. Position: "<version>.<trial number | b | e>"."""

    key = "t"

    def __init__(self, studies: StudyQueries, study_id: UUID, project: str) -> None:
        self.studies, self.study_id, self.project = studies, study_id, project
        self.version, self.after = 0, "e"
        self.study: dict[str, Any] | None = None

    def token(self) -> str:
        return f"{self.version}.{self.after}"

    def seek(self, token: str) -> None:
        version, _, after = token.partition(".")
        if after not in _AFTER:
            _int(after)
        self.version, self.after = _int(version), after

    def read(self, pushed: list | None = None) -> list[Message]:
        # the version before the study: the study read is then never older than the version it is sent under (at
        # worst newer, and sent again under its own); the other way round, a study that ended between the two reads
        # would be sent as still running under the version that ended it, and never again
        version = self.studies.version(self.study_id)
        study = self.studies.get(self.study_id, project=self.project)
        if study is None or version is None:
            return []
        self.study = study
        out: list[Message] = []
        number = 2**31 if self.after in _AFTER else int(self.after)  # "b", "e": every trial of the version was sent
        trials = self.studies.trials_after(self.study_id, self.version, number, PAGE)
        for t in trials:
            self.version, self.after = t.pop("version"), str(t["number"])
            out.append(("trial", _jsonable(t), self.token()))
        if len(trials) == PAGE or (version, 2) <= (self.version, _AFTER.get(self.after, 0)):
            return out
        best = study.get("best_trial")
        if best is not None and (self.version < version or self.after != "b") and \
                any(t["number"] == best.get("number") and t["state"] == "completed" for t in trials):
            self.version, self.after = version, "b"
            out.append(("best", _jsonable(best), self.token()))
        self.version, self.after = version, "e"
        out.append(("study", _jsonable(study), self.token()))
        return out

    @property
    def finished(self) -> bool:
        return self.study is not None and self.study["status"] in ("completed", "cancelled", "failed")


class DeploymentChanges:
    """`revision` (each new revision: a change of traffic, variants or policy, a promotion, a rollback, what the
    policy did) and `evaluation` (the policy engine's latest evaluation, when it changes). Position:
    "<revision>.<evaluation time, ms>"."""

    key = "d"

    def __init__(self, deployments: DeploymentQueries, name: str, project: str) -> None:
        self.deployments, self.name, self.project = deployments, name, project
        self.revision, self.evaluated = 0, 0

    def token(self) -> str:
        return f"{self.revision}.{self.evaluated}"

    def seek(self, token: str) -> None:
        revision, _, evaluated = token.partition(".")
        self.revision, self.evaluated = _int(revision), _int(evaluated or "0")

    def read(self, pushed: list | None = None) -> list[Message]:
        out: list[Message] = []
        for r in self.deployments.history(self.name, project=self.project):
            if r["revision"] > self.revision:
                self.revision = r["revision"]
                out.append(("revision", _jsonable(r), self.token()))
        row = self.deployments.get(self.name, project=self.project)
        evaluation = (row or {}).get("last_evaluation")
        if evaluation and evaluation.get("at"):
            at = _epoch_ms(evaluation["at"])
            if at > self.evaluated:
                self.evaluated = at
                out.append(("evaluation", _jsonable(evaluation), self.token()))
        return out


def _epoch_ms(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return int(value.timestamp() * 1000)


def _jsonable(value: Any) -> Any:
    """Rows as JSON: UUIDs and times as text, non-finite floats as "nan"/"inf"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return _json_number(value)
    return value


@dataclass
class Stream:
    """A stream's sources and its cursor: `start(from_id)` positions them, `read()` returns the next messages with
    their ids (the whole cursor after each)."""

    sources: list[Source]

    def start(self, from_id: str | None) -> None:
        if from_id is None:
            return
        tokens = decode(from_id, [s.key for s in self.sources])
        for source in self.sources:
            if source.key in tokens:
                source.seek(tokens[source.key])

    def cursor(self) -> str:
        return encode({s.key: s.token() for s in self.sources})

    def more(self, keys: set[str] | None = None) -> set[str]:
        """The sources among `keys` (None: all) that may have more to read at once: all but those that say they
        have caught up with their store (pushed rows are handed over whole, so a caught-up source has none left)."""
        return {s.key for s in self.sources if (keys is None or s.key in keys) and not getattr(s, "caught_up", False)}

    def read(self, keys: set[str] | None = None,
             pushed: dict[str, list | None] | None = None) -> list[tuple[str, dict[str, Any], str]]:
        """The next messages of the sources named by `keys` (None: of every source); `pushed`: source key -> what
        the fan-out handed over for it (Source.read)."""
        out = []
        for source in self.sources:
            if keys is not None and source.key not in keys:
                continue
            for event, data, token in source.read((pushed or {}).get(source.key)):
                positions = {s.key: s.token() for s in self.sources}
                positions[source.key] = token
                out.append((event, _jsonable(data), encode(positions)))
        return out
