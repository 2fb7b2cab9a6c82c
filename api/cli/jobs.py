"""Training jobs: `submit`, `watch`, `jobs`, `job`, `logs`, `cancel`, `retry`."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from pydantic import TypeAdapter
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from api.cli import ids
from api.cli.ids import JobIdArg
from api.cli.app import ApiOpt, cli, connect
from api.cli.output import console, line, seconds, size, styled, when
from api.cli.watching import WATCH_PATIENCE_S, poll
from api.client import StreamNotServed, TrainyardClient, TrainyardError
from domain.contract import LOG_LEVELS
from domain.vocabulary import FINISHED, Framework, JobStatus, Priority, Task, choices


@cli.command()
def submit(
    framework: Annotated[str, typer.Option(help=choices(Framework))],
    task: Annotated[str, typer.Option(help=choices(Task))],
    dataset: Annotated[Optional[str], typer.Option(help="builtin://breast_cancer | file:///abs/data.csv ... "
                                                        "(optional for framework python)")] = None,
    name: Annotated[Optional[str], typer.Option()] = None,
    code: Annotated[Optional[str], typer.Option(help="framework python: a code_id (`trainyard code push DIR`)")] = None,
    entry: Annotated[str, typer.Option(help="framework python: the bundle's script to run")] = "train.py",
    arg: Annotated[list[str], typer.Option("--arg", help="framework python: an argument of the script (repeat)")] = [],
    cpus: Annotated[Optional[int], typer.Option(help="framework python: its CPUs (default 1)")] = None,
    memory_mb: Annotated[Optional[int], typer.Option(help="framework python: its memory limit (default 2048)")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="frameworks python and pytorch: GPUs it needs (default 0); "
                                                     "only runners with them take it")] = None,
    target: Annotated[Optional[str], typer.Option(help="target column (file:// datasets)")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="name=value (value parsed as JSON; repeat)")] = [],
    forecast: Annotated[Optional[str], typer.Option(help="task forecasting: name=value[,name=value...] of "
                                                         "time_column, series_column, horizon, lags ([1,7]), "
                                                         "rolling, season")] = None,
    validation: Annotated[Optional[str], typer.Option(help="STRATEGY[,name=value...]: holdout | kfold | "
                                                           "time_series, e.g. kfold,k=5 or "
                                                           "time_series,time_column=day,test_fraction=0.2")] = None,
    priority: Annotated[str, typer.Option(help=choices(Priority))] = Priority.MEDIUM.value,
    tag: Annotated[list[str], typer.Option("--tag")] = [],
    idempotency_key: Annotated[Optional[str], typer.Option()] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="watch it until it ends")] = False,
    api: ApiOpt = None,
) -> None:
    """Submit a training job; prints its id (with --watch: exit 0 only when it completes)."""
    params = parse_params(param)
    body: dict[str, Any] = {"name": name or f"{framework}-{task}", "framework": framework, "task": task,
                            "params": params, "priority": priority, "tags": tag}
    if validation:
        strategy, *fields = validation.split(",")
        body["validation"] = {"strategy": strategy.strip(), **parse_params(fields)}
    if dataset:
        body["dataset"] = {"uri": dataset, **({"target": target} if target else {})}
        if forecast:  # lists hold commas: split only before a name=
            body["dataset"]["forecast"] = parse_params(re.split(r",(?=[A-Za-z_]+=)", forecast))
    if code:  # a code job: the API says what is missing or wrong (field code.code_id, code.entrypoint, ...)
        body["code"] = {"code_id": code, "entrypoint": entry, "args": arg}
    limits = {k: v for k, v in (("cpus", cpus), ("memory_mb", memory_mb), ("gpus", gpus)) if v is not None}
    if limits:  # the API says where they do not apply (field resources)
        body["resources"] = limits
    client = connect(api)
    out = client.submit(body, idempotency_key)
    console.print(out["job_id"])
    if watch_it:
        job = _watch(client, out["job_id"], submitted=True)
        raise typer.Exit(0 if job["status"] == "completed" else 1)


def parse_params(param: list[str]) -> dict[str, Any]:
    """`--param name=value` options as params: each value parsed as JSON, else kept as text."""
    params = {}
    for p in param:
        key, eq, raw = p.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{p!r}: the syntax is name=value (value parsed as JSON), e.g. "
                                     "n_estimators=200", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@cli.command()
def retry(
    job_id: JobIdArg,
    param: Annotated[list[str], typer.Option("--param", "-p", help="name=value over the job's params (value parsed "
                                                                   "as JSON; repeat)")] = [],
    priority: Annotated[Optional[str], typer.Option(help=f"{choices(Priority)} (default: the job's)")] = None,
    from_checkpoint: Annotated[bool, typer.Option(help="start from the job's latest checkpoint where it has one")]
    = True,
    idempotency_key: Annotated[Optional[str], typer.Option()] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="watch the new job until it ends")] = False,
    api: ApiOpt = None,
) -> None:
    """Retry a failed or cancelled job: a new job with its spec and these overrides; prints the new job's id."""
    params = parse_params(param)
    client = connect(api)
    out = client.retry_job(ids.job_id(client, job_id), params, priority, from_checkpoint, idempotency_key)
    console.print(out["job_id"])
    if watch_it:
        job = _watch(client, out["job_id"], submitted=True)
        raise typer.Exit(0 if job["status"] == "completed" else 1)


def _watch(client: TrainyardClient, job_id: str, interval: float = 0.5, patience: float = WATCH_PATIENCE_S,
           submitted: bool = False) -> dict:
    """Follow the job and its latest metrics into a progress bar until it ends. Once the job has been seen, an
    unreachable API or a 5xx is retried with backoff for up to `patience` seconds of continuous failure (an API
    restart), the bar staying; then the last error is raised. A job just `submitted` may also 404 for that long
    (its read model behind)."""
    if not submitted:  # a bad id, an unknown job or an API that is not there: the one-line error, without a bar
        client.job(job_id)
    job = _follow(client, job_id, interval, patience, submitted) if console.is_terminal else \
        _follow_plain(client, job_id, interval, patience, submitted)
    console.print_json(data={k: job[k] for k in ("status", "final_metrics", "artifact", "error")})
    return job


def _tolerate(submitted: bool) -> Any:
    return lambda e: e.retryable or (submitted and e.status == 404)


def _retrying(e: TrainyardError, left: float | None) -> str:
    why = f"API {'unreachable' if e.status is None else e.status}: {e.detail or e.title}"
    return f"{why}; retrying" + (f", giving up in {left:.0f} s" if left is not None else "")


Looks = Iterator[tuple[dict, dict]]


def _looks(client: TrainyardClient, job_id: str, interval: float, patience: float, submitted: bool,
           on_error: Any) -> Looks:
    """(the job, its latest metric points by name) as they change: from the job's live stream, or by polling every
    `interval` seconds an API that has none."""
    try:
        yield from _streamed(client, job_id, patience, submitted, on_error)
    except StreamNotServed:
        yield from poll(lambda: _look(client, job_id), interval, patience=patience, max_delay=2.0,
                        on_error=on_error, tolerate=_tolerate(submitted))


def _streamed(client: TrainyardClient, job_id: str, patience: float, submitted: bool, on_error: Any) -> Looks:
    """A look per status or metrics message. The ended job is shown at "end" only: its last points come after
    the status that says it ended."""
    job: dict | None = None
    latest: dict[str, dict[str, Any]] = {}
    for event, _, data in client.stream_job(job_id, patience=patience, tolerate=_tolerate(submitted),
                                            on_error=on_error):
        if event == "status":
            job = data
        elif event == "metrics":
            for p in data["points"]:
                seen = latest.get(p["name"])
                if seen is None or (p["attempt"], p["step"]) >= (seen["attempt"], seen["step"]):
                    latest[p["name"]] = p
        elif event != "end":
            continue
        if job is not None and (event == "end" or job["status"] not in FINISHED):
            yield job, {n: {"step": latest[n]["step"], "value": float(latest[n]["value"])} for n in sorted(latest)}


def _follow(client: TrainyardClient, job_id: str, interval: float, patience: float, submitted: bool) -> dict:
    """On a terminal: a progress bar with the latest metrics, redrawn in place."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), console=console) as bar:
        t = bar.add_task(job_id[:8], total=100, metrics="")

        def waiting(e: TrainyardError, left: float | None) -> None:
            bar.update(t, metrics=f"[yellow]{escape(_retrying(e, left))}[/yellow]")

        for job, latest in _looks(client, job_id, interval, patience, submitted, waiting):
            bar.update(t, completed=job["progress"]["percentage_complete"],
                       description=f"{job_id[:8]} {job['status']} a{job['attempt']}", metrics=escape(_shown(latest)))
            if job["status"] in FINISHED:
                break
    return job


def _follow_plain(client: TrainyardClient, job_id: str, interval: float, patience: float, submitted: bool) -> dict:
    """Piped: a plain line each time the job changes, flushed as it happens (a bar would only be drawn at the end)."""
    last = None
    for job, latest in _looks(client, job_id, interval, patience, submitted,
                              lambda e, left: line(f"{job_id[:8]} {_retrying(e, left)}")):
        now = (f"{job_id[:8]} {job['status']} attempt {job['attempt']} "
               f"{job['progress']['percentage_complete']:.0f}% {_shown(latest)}").rstrip()
        if now != last:
            line(now)  # rich flushes each print
            last = now
        if job["status"] in FINISHED:
            return job
    raise AssertionError("unreachable")


def _look(client: TrainyardClient, job_id: str) -> tuple[dict, dict]:
    return client.job(job_id), client.metrics(job_id)["latest"]


def _shown(latest: dict[str, Any]) -> str:
    return " ".join(f"{n}={p['value']:.4g}" for n, p in latest.items())


@cli.command()
def watch(job_id: JobIdArg, api: ApiOpt = None,
          retry_for: Annotated[float, typer.Option(help="seconds to ride out an unreachable or failing API")]
          = WATCH_PATIENCE_S) -> None:
    """A live progress bar with the latest metrics until the job ends; exit 0 only when it completes.

    Rides out an API restart (no connection, 5xx) for --retry-for seconds."""
    client = connect(api)
    job = _watch(client, ids.job_id(client, job_id), patience=retry_for)
    raise typer.Exit(0 if job["status"] == "completed" else 1)


@cli.command()
def jobs(status: Annotated[Optional[str], typer.Option(help=choices(JobStatus))] = None,
         framework: Annotated[Optional[str], typer.Option(help=choices(Framework))] = None, tag: Optional[str] = None,
         limit: int = 20, offset: int = 0, api: ApiOpt = None) -> None:
    """List jobs, newest first."""
    out = connect(api).jobs(status=status, framework=framework, tag=tag, limit=limit, offset=offset)
    table = Table(title=f"{out['total']} jobs", box=None)
    table.add_column("job_id", no_wrap=True, min_width=36)
    for col, width in (("status", 9), ("done", 4), ("try", 3), ("priority", 8)):
        table.add_column(col, no_wrap=True, min_width=width)
    for col in ("model", "name"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for j in out["items"]:
        table.add_row(j["job_id"], j["status"], f"{j['progress']['percentage_complete']:.0f}%", budget_attempt(j),
                      j["priority"], f"{j['framework']}/{j['task']}", j["name"])
    console.print(table)


def budget_attempt(j: dict[str, Any]) -> str:
    """The attempt `max_attempts` counts: lost runners + 1 (hand-backs start runs but spend nothing); '-' before
    the first run."""
    if not j["attempt"]:
        return "-"
    return str(min(j.get("lost_leases", 0) + 1, j.get("max_attempts", 3)))


def attempt_line(j: dict[str, Any]) -> str:
    line = f"{budget_attempt(j)} of {j.get('max_attempts', 3)}"
    if j.get("hand_backs"):
        line += f" (run {j['attempt']}: {j['hand_backs']} handed back gracefully, no attempt spent)"
    return line + (f" on {escape(j['runner_id'])}" if j.get("runner_id") else "")


@cli.command()
def job(job_id: JobIdArg, as_json: Annotated[bool, typer.Option("--json", help="print the raw data")] = False,
        api: ApiOpt = None) -> None:
    """One job: status, params, progress, timings, error, latest metrics, final metrics, artifact.

    With --json: the raw job and its metrics ({"job": ..., "metrics": {"names", "latest"}})."""
    client = connect(api)
    job_id = ids.job_id(client, job_id)
    j = client.job(job_id)
    try:
        metrics: dict[str, Any] | None = client.metrics(job_id)
        metrics_error = None
    except TrainyardError as e:  # the job is known; its metrics store may be briefly unavailable
        if not e.retryable:
            raise
        metrics, metrics_error = None, str(e)
    if as_json:
        print(json.dumps({"job": j, "metrics": metrics}, indent=2))
        return
    p = j["progress"]
    total = f"/{p['total_steps']}" if p.get("total_steps") is not None else ""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("job_id", j["job_id"]),
        ("name", escape(j["name"])),
        ("status", styled(j["status"])
                   + (" (cancel requested)" if j.get("cancel_requested") and j["status"] not in FINISHED else "")),
        ("attempt", attempt_line(j)),
        ("priority", j["priority"]),
        ("model", f"{j['framework']}/{j['task']}"),
        ("dataset", escape(" ".join(f"{k}={v}" for k, v in j["dataset"].items()))),
        ("params", escape(json.dumps(j["params"]))),
        ("tags", escape(", ".join(j.get("tags") or [])) or "-"),
        ("progress", f"{p['percentage_complete']:.0f}% (step {p['current_step']}{total}, "
                     f"elapsed {seconds(p.get('elapsed_s'))}, eta {seconds(p.get('eta_s'))})"),
        ("created", when(j["created_at"])),
        ("started", when(j.get("started_at"), j["created_at"], "queued")),
        ("finished", when(j.get("finished_at"), j.get("started_at") or j["created_at"],
                           "ran" if j.get("started_at") else "after")),
    ]
    if j.get("requeue_reason"):
        rows.append(("requeued", escape(j["requeue_reason"])))
    if j.get("retry_of"):
        rows.append(("retry of", j["retry_of"]))
    if j.get("retried_by"):
        more = len(j.get("retries") or []) - 1
        rows.append(("retried by", j["retried_by"] + (f" (and {more} earlier)" if more > 0 else "")))
    if j.get("error"):
        rows.append(("error", f"[red]{escape(j['error'])}[/red]"))
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)

    if metrics_error:
        console.print(Text(f"metrics unavailable: {metrics_error}", style="yellow"), soft_wrap=True)
    elif metrics and metrics["latest"]:
        table = Table(title="latest metrics", title_justify="left", box=None)
        for col in ("metric", "step", "value"):
            table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
        for name, point in sorted(metrics["latest"].items()):
            table.add_row(escape(name), str(point["step"]), f"{point['value']:.6g}")
        console.print(table)
    if j.get("final_metrics"):
        table = Table(title="final metrics", title_justify="left", box=None)
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        for name, value in sorted(j["final_metrics"].items()):
            table.add_row(escape(name), f"{value:.6g}")
        console.print(table)
    if art := j.get("artifact"):
        console.print("[bold]artifact[/bold]")
        for key in ("uri", "sha256", "size_bytes", *(k for k in art if k not in ("uri", "sha256", "size_bytes"))):
            if key in art:
                value = size(art[key]) if key == "size_bytes" and isinstance(art[key], int) else str(art[key])
                console.print(f"  {key:<10} {escape(value)}", soft_wrap=True, highlight=False)


_ISO = TypeAdapter(datetime)
LEVEL_STYLE = {"debug": "dim", "warning": "yellow", "error": "red", "critical": "bold red"}


def _print_lines(lines: list[dict[str, Any]]) -> None:
    """`ts LEVEL [stream] message`, the message as it is (no markup), coloured by level on a terminal."""
    for entry in lines:
        text = Text(f"{entry['ts']} {entry['level'].upper()} [{entry['stream']}] ",
                    style=LEVEL_STYLE.get(entry["level"], ""))
        text.append(entry["message"])
        console.print(text, soft_wrap=True, highlight=False)


def _stored_line(entry: dict[str, Any]) -> dict[str, Any]:
    """A stream's log line (ts in epoch ms) as GET …/logs shows it (ts as ISO 8601 text, the same digits)."""
    ts = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=entry["ts"])
    return {**entry, "ts": _ISO.dump_python(ts, mode="json")}


def follow_logs(client: TrainyardClient, job_id: str, level: str, tail: int, interval: float = 1.0,
                patience: float = WATCH_PATIENCE_S) -> dict[str, Any]:
    """Print the job's last `tail` lines, then the new ones as they come, until the job has finished and its last
    lines are shown; returns the job. New lines come from the job's live stream, resumed after the last line
    shown (an API without streams is polled every `interval` seconds)."""
    page = client.logs(job_id, tail=tail, level=level)
    _print_lines(page["lines"])
    after = page["next_after"]
    least, job = LOG_LEVELS[level], None
    try:
        for event, _, data in client.stream_job(job_id, f"l={after.replace(':', '.')}" if after else None,
                                                patience=patience):
            if event == "status":
                job = data
            elif event == "logs" and data["lines"]:
                _print_lines([_stored_line(x) for x in data["lines"] if LOG_LEVELS[x["level"]] >= least])
                after = f"{data['lines'][-1]['attempt']}:{data['lines'][-1]['seq']}"
            elif event == "end" and job is not None:
                return job
        raise AssertionError("unreachable")  # a job's stream ends with its status shown
    except StreamNotServed:
        return _poll_logs(client, job_id, level, after, interval, patience)


def _poll_logs(client: TrainyardClient, job_id: str, level: str, after: str | None, interval: float,
               patience: float) -> dict[str, Any]:
    finished_seen = 0
    for job, page in poll(lambda: (client.job(job_id), client.logs(job_id, after=after, level=level)), interval,
                          patience=patience, wait_first=True, max_delay=5.0):
        _print_lines(page["lines"])
        after = page["next_after"] or after
        if job["status"] in FINISHED:  # the end is reported after the runner shipped the lines: one more look
            finished_seen += 1
            if finished_seen > 1 and not page["lines"]:
                return job
    raise AssertionError("unreachable")


@cli.command()
def logs(job_id: JobIdArg,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="go on printing new lines until the job ends")]
         = False,
         level: Annotated[str, typer.Option(help=f"the least level shown: {', '.join(LOG_LEVELS)}")] = "debug",
         tail: Annotated[int, typer.Option(help="how many of the last lines to show first", min=1, max=10_000)] = 200,
         api: ApiOpt = None) -> None:
    """A job's training logs: what it printed and logged, warnings, a failure's traceback (`ts LEVEL [stream]
    message`)."""
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{level!r}: one of {', '.join(LOG_LEVELS)}", param_hint="--level")
    client = connect(api)
    job_id = ids.job_id(client, job_id)
    if follow:
        follow_logs(client, job_id, level, tail)
    else:
        _print_lines(client.logs(job_id, tail=tail, level=level)["lines"])


@cli.command()
def cancel(job_id: JobIdArg, api: ApiOpt = None) -> None:
    """Cancel a queued or running job."""
    client = connect(api)
    console.print_json(data=client.cancel(ids.job_id(client, job_id)))
