"""The `trainyard` command's client side: use the service (`submit`,
`watch`, `jobs`, `job`, `cancel`, `status`, `study create|watch|cancel`, `studies`; the model registry: `models`,
`model register|show|alias`, `export`; serving: `deploy`, `deployments`, `deployment`, `traffic`, `promote`,
`rollback`, `undeploy`, `api-key create|list|revoke`, `predict`; the online comparison: `ab`, `feedback`,
`policy`). An API error or an unreachable API is one `error: ...` line and exit status 1; a malformed argument is a
usage error, exit status 2."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from api.client import FINISHED, STUDY_ENDED, TrainyardClient, TrainyardError


class _OneLineErrors(TyperGroup):
    """Every command: a TrainyardError (an API error answer, a bad job id, an unreachable API) is printed as one
    `error: ...` line and exits 1; never a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainyardError as e:
            console.print(Text(f"error: {e}", style="red"), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None


cli = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, help="Trainyard: event-sourced ML training service.")
console = Console()
WATCH_PATIENCE_S = 60.0  # how long `watch` rides out an unreachable or failing (5xx) API before giving up
STATUS_STYLE = {"ok": "green", "starting": "cyan", "behind": "yellow", "stuck": "red", "error": "red",
                "completed": "green", "running": "cyan", "queued": "blue", "failed": "red", "cancelled": "yellow",
                "cancelling": "yellow", "pruned": "magenta"}
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: endpoints.json or :8000)")]


@cli.command()
def submit(
    framework: Annotated[str, typer.Option(help="lightgbm | pytorch")],
    task: Annotated[str, typer.Option(help="binary_classification | multiclass_classification | regression")],
    dataset: Annotated[str, typer.Option(help="builtin://breast_cancer | file:///abs/data.csv ...")],
    name: Annotated[Optional[str], typer.Option()] = None,
    target: Annotated[Optional[str], typer.Option(help="target column (file:// datasets)")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="KEY=VALUE (VALUE parsed as JSON)")] = [],
    priority: Annotated[str, typer.Option()] = "medium",
    tag: Annotated[list[str], typer.Option("--tag")] = [],
    idempotency_key: Annotated[Optional[str], typer.Option()] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="watch it until it ends")] = False,
    api: ApiOpt = None,
) -> None:
    """Submit a training job; prints its id (with --watch: exit 0 only when it completes)."""
    params = {}
    for p in param:
        key, _, raw = p.partition("=")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    body = {"name": name or f"{framework}-{task}", "framework": framework, "task": task,
            "dataset": {"uri": dataset, **({"target": target} if target else {})},
            "params": params, "priority": priority, "tags": tag}
    client = TrainyardClient(api)
    out = client.submit(body, idempotency_key)
    console.print(out["job_id"])
    if watch_it:
        job = _watch(client, out["job_id"], submitted=True)
        raise typer.Exit(0 if job["status"] == "completed" else 1)


def _watch(client: TrainyardClient, job_id: str, interval: float = 0.5, patience: float = WATCH_PATIENCE_S,
           submitted: bool = False) -> dict:
    """Poll the job and its latest metrics into a progress bar until it ends. Once the job has been seen, an
    unreachable API or a 5xx is retried with backoff for up to `patience` seconds of continuous failure (an API
    restart), the bar staying; then the last error is raised. A job just `submitted` may also 404 for that long
    (its read model behind)."""
    down_since: float | None = None
    delay = interval
    if not submitted:  # a bad id, an unknown job or an API that is not there: the one-line error, without a bar
        client.job(job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), console=console) as bar:
        t = bar.add_task(job_id[:8], total=100, metrics="")
        while True:
            try:
                job = client.job(job_id)
                latest = client.metrics(job_id)["latest"]
            except TrainyardError as e:
                now = time.monotonic()
                down_since = down_since if down_since is not None else now
                if not (e.retryable or (submitted and e.status == 404)) or now - down_since >= patience:
                    raise
                left = patience - (now - down_since)
                why = f"API {'unreachable' if e.status is None else e.status}: {e.detail or e.title}"
                bar.update(t, metrics=f"[yellow]{escape(why)}; retrying, giving up in {left:.0f} s[/yellow]")
                time.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)
                continue
            down_since, delay = None, interval
            shown = " ".join(f"{n}={p['value']:.4g}" for n, p in latest.items())
            bar.update(t, completed=job["progress"]["percentage_complete"],
                       description=f"{job_id[:8]} {job['status']} a{job['attempt']}", metrics=escape(shown))
            if job["status"] in FINISHED:
                break
            time.sleep(interval)
    console.print_json(data={k: job[k] for k in ("status", "final_metrics", "artifact", "error")})
    return job


@cli.command()
def watch(job_id: str, api: ApiOpt = None,
          retry_for: Annotated[float, typer.Option(help="seconds to ride out an unreachable or failing API")]
          = WATCH_PATIENCE_S) -> None:
    """A live progress bar with the latest metrics until the job ends; exit 0 only when it completes.

    Rides out an API restart (no connection, 5xx) for --retry-for seconds."""
    job = _watch(TrainyardClient(api), job_id, patience=retry_for)
    raise typer.Exit(0 if job["status"] == "completed" else 1)


@cli.command()
def jobs(status: Optional[str] = None, framework: Optional[str] = None, tag: Optional[str] = None,
         limit: int = 20, offset: int = 0, api: ApiOpt = None) -> None:
    """List jobs, newest first."""
    out = TrainyardClient(api).jobs(status=status, framework=framework, tag=tag, limit=limit, offset=offset)
    table = Table(title=f"{out['total']} jobs", box=None)
    table.add_column("job_id", no_wrap=True, min_width=36)
    for col, width in (("status", 9), ("done", 4), ("try", 3), ("priority", 8)):
        table.add_column(col, no_wrap=True, min_width=width)
    for col in ("model", "name"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for j in out["items"]:
        table.add_row(j["job_id"], j["status"], f"{j['progress']['percentage_complete']:.0f}%", str(j["attempt"]),
                      j["priority"], f"{j['framework']}/{j['task']}", j["name"])
    console.print(table)


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"


def _when(ts: str | None, since: str | None = None, what: str = "") -> str:
    """'2025-05-01 14:00:03' (local time) or, with `since`, '2025-05-01 14:00:03 (ran 2.9 s)'."""
    if not ts:
        return "-"
    at = datetime.fromisoformat(ts)
    text = at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} ({what} {(at - datetime.fromisoformat(since)).total_seconds():.1f} s)" if since else text


def _size(n: int) -> str:
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


@cli.command()
def job(job_id: str, as_json: Annotated[bool, typer.Option("--json", help="print the raw data")] = False,
        api: ApiOpt = None) -> None:
    """One job: status, params, progress, timings, error, latest metrics, final metrics, artifact.

    With --json: the raw job and its metrics ({"job": ..., "metrics": {"names", "latest"}})."""
    client = TrainyardClient(api)
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
        ("status", f"[{STATUS_STYLE.get(j['status'], 'white')}]{j['status']}[/]"
                   + (" (cancel requested)" if j.get("cancel_requested") and j["status"] not in FINISHED else "")),
        ("attempt", f"{j['attempt']}" + (f" on {escape(j['runner_id'])}" if j.get("runner_id") else "")),
        ("priority", j["priority"]),
        ("model", f"{j['framework']}/{j['task']}"),
        ("dataset", escape(" ".join(f"{k}={v}" for k, v in j["dataset"].items()))),
        ("params", escape(json.dumps(j["params"]))),
        ("tags", escape(", ".join(j.get("tags") or [])) or "-"),
        ("progress", f"{p['percentage_complete']:.0f}% (step {p['current_step']}{total}, "
                     f"elapsed {_seconds(p.get('elapsed_s'))}, eta {_seconds(p.get('eta_s'))})"),
        ("created", _when(j["created_at"])),
        ("started", _when(j.get("started_at"), j["created_at"], "queued")),
        ("finished", _when(j.get("finished_at"), j.get("started_at") or j["created_at"],
                           "ran" if j.get("started_at") else "after")),
    ]
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
                value = _size(art[key]) if key == "size_bytes" and isinstance(art[key], int) else str(art[key])
                console.print(f"  {key:<10} {escape(value)}", soft_wrap=True, highlight=False)


@cli.command()
def cancel(job_id: str, api: ApiOpt = None) -> None:
    """Cancel a queued or running job."""
    console.print_json(data=TrainyardClient(api).cancel(job_id))


def _cut(text: Any, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@cli.command()
def status(api: ApiOpt = None) -> None:
    """Readiness: each engine and pipeline stage; exit 0 when ready, 1 otherwise.

    One row per engine check (postgres, nats, clickhouse) and per stage (relay, projectors, reconciler...)."""
    client = TrainyardClient(api)
    code, body = client.ready()
    ready = code == 200 and bool(body.get("ready"))
    console.print(f"{'[green]ready[/green]' if ready else '[red]NOT READY[/red]'} ({escape(client.base_url)})")

    def show(heads: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        """Name, colored status, the other columns, and last the error, cut to what the others leave."""
        if not rows:
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:-1])]
        room = max(12, console.width - 2 * (len(heads) - 1) - sum(widths))
        table = Table(box=None, pad_edge=False)
        for i, head in enumerate(heads):
            table.add_column(head, no_wrap=True, justify="left" if i < 2 or i == len(heads) - 1 else "right")
        for name, state, *middle, error in rows:
            table.add_row(escape(name), f"[{STATUS_STYLE.get(state, 'white')}]{escape(state)}[/]", *middle,
                          escape(_cut(error, room)))
        console.print(table)

    checks = [(name, *(x.strip() for x in str(check).partition(":")[::2])) for name, check in
              (body.get("checks") or {}).items()]
    show(("check", "status", "detail"), checks)
    stages = []
    for name, st in (body.get("stages") or {}).items():
        since = st.get("last_progress_s")
        stages.append((name, str(st.get("status")), "-" if st.get("position") is None else str(st["position"]),
                       "-" if st.get("lag") is None else str(st["lag"]),
                       "-" if since is None else f"{since:.1f} s ago", str(st.get("poisoned") or 0),
                       st.get("last_error") or ""))
    show(("stage", "status", "position", "lag", "progress", "poisoned", "last error"), stages)
    raise typer.Exit(0 if ready else 1)


# ---- studies -------------------------------------------------------------------------------------------
study_cli = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, help="Hyperparameter studies.")
cli.add_typer(study_cli, name="study")


def _trials_table(client: TrainyardClient, study_id: str) -> Table:
    st = client.study(study_id)
    rows = client.trials(study_id, limit=1000)["items"]
    best = st.get("best_trial") or {}
    counts = " ".join(f"{k} {v}" for k, v in st["counts"].items() if v)
    best_text = f"{best['value']:.6g} (trial {best['number']})" if best else "-"
    title = (f"{escape(st['name'])} [{STATUS_STYLE.get(st['status'], 'white')}]{st['status']}[/] "
             f"{len(rows)}/{st['n_trials']} trials ({counts or 'none yet'}); best {st['objective']['metric']} "
             f"{best_text}")
    table = Table(title=title, title_justify="left", box=None)
    for col in ("#", "state", "value", "params", "job_id"):
        table.add_column(col, no_wrap=col != "params", overflow="fold")
    for t in rows[-30:]:
        value = "-" if t["value"] is None else f"{t['value']:.6g}"
        if t["state"] == "pruned" and t.get("pruned_at_step") is not None:
            value = f"pruned@{t['pruned_at_step']}"
        table.add_row(str(t["number"]), f"[{STATUS_STYLE.get(t['state'], 'white')}]{t['state']}[/]", value,
                      escape(json.dumps(t["params"])), t["job_id"])
    table.extra = st  # type: ignore[attr-defined]
    return table


def _watch_study(client: TrainyardClient, study_id: str, interval: float = 1.0) -> dict:
    from rich.live import Live

    table = _trials_table(client, study_id)
    with Live(table, console=console, refresh_per_second=4) as live:
        while table.extra["status"] not in STUDY_ENDED:  # type: ignore[attr-defined]
            time.sleep(interval)
            try:
                table = _trials_table(client, study_id)
            except TrainyardError as e:
                if not e.retryable:
                    raise
                continue
            live.update(table)
    return table.extra  # type: ignore[attr-defined]


@study_cli.command("create")
def study_create(file: Annotated[str, typer.Argument(help="a JSON study spec, or - for standard input")],
                 idempotency_key: Annotated[Optional[str], typer.Option()] = None,
                 watch_it: Annotated[bool, typer.Option("--watch", help="a live table of trials until it ends")] = False,
                 api: ApiOpt = None) -> None:
    """Create a study from a JSON spec (see POST /api/v1/studies); prints its id."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        body = json.loads(text)
    except (OSError, ValueError) as e:
        raise TrainyardError(None, {"title": "Invalid input", "detail": f"{file}: {e}"}) from None
    client = TrainyardClient(api)
    out = client.create_study(body, idempotency_key)
    console.print(out["study_id"])
    if watch_it:
        st = _watch_study(client, out["study_id"])
        raise typer.Exit(0 if st["status"] == "completed" else 1)


@study_cli.command("watch")
def study_watch(study_id: str, api: ApiOpt = None) -> None:
    """A live table of the study's trials and its best value until it ends; exit 0 when it completed."""
    client = TrainyardClient(api)
    st = _watch_study(client, study_id)
    raise typer.Exit(0 if st["status"] == "completed" else 1)


@study_cli.command("cancel")
def study_cancel(study_id: str, api: ApiOpt = None) -> None:
    """Cancel a study: no new trials, running ones are cancelled; completed trials and the best are kept."""
    st = TrainyardClient(api).cancel_study(study_id)
    console.print(f"{st['study_id']} {st['status']}")


@cli.command()
def studies(status: Optional[str] = None, limit: int = 20, offset: int = 0, api: ApiOpt = None) -> None:
    """List studies, newest first."""
    out = TrainyardClient(api).studies(status=status, limit=limit, offset=offset)
    table = Table(title=f"{out['total']} studies", box=None)
    for col in ("study_id", "status", "trials", "best", "objective", "name"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=36 if col == "study_id" else None)
    for st in out["items"]:
        done = sum(v for k, v in st["counts"].items() if k in ("completed", "pruned", "failed"))
        best = st.get("best_trial")
        table.add_row(st["study_id"], f"[{STATUS_STYLE.get(st['status'], 'white')}]{st['status']}[/]",
                      f"{done}/{st['n_trials']}", "-" if not best else f"{best['value']:.6g}",
                      f"{st['objective']['direction'][:3]} {st['objective']['metric']}", escape(st["name"]))
    console.print(table)


# ---- model registry and ONNX exports ----------------------------------------------------------------------
model_cli = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, help="Registered models and their versions.")
cli.add_typer(model_cli, name="model")
JsonOpt = Annotated[bool, typer.Option("--json", help="print the raw JSON answer")]
EXPORT_POLL_S = 1.0  # how often `export --watch` reads the export


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _line(text: str, style: str | None = None) -> None:
    """One plain line (no markup, no highlighting, never wrapped)."""
    console.print(Text(text, style=style or ""), soft_wrap=True, highlight=False)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def _aliases(aliases: dict[str, int] | None) -> str:
    return ", ".join(f"{a}→v{v}" for a, v in sorted((aliases or {}).items())) or "-"


@cli.command()
def models(limit: int = 50, offset: int = 0, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """List registered models: latest version, aliases, tags."""
    out = TrainyardClient(api).models(limit=limit, offset=offset)
    if as_json:
        return _print_json(out)
    table = Table(title=f"{out['total']} models", box=None)
    for col in ("name", "latest", "aliases", "tags", "description"):
        table.add_column(col, no_wrap=col != "description", overflow="ellipsis")
    for m in out["items"]:
        table.add_row(escape(m["name"]), f"v{m['latest_version']}" if m["latest_version"] else "-",
                      escape(_aliases(m.get("aliases"))), escape(", ".join(m.get("tags") or [])) or "-",
                      escape(_cut(m.get("description") or "", 50)))
    console.print(table)


@model_cli.command("register")
def model_register(job_id: Annotated[str, typer.Argument(help="a completed training job")],
                   name: Annotated[str, typer.Option("--name", help="the model (created if it does not exist)")],
                   description: Annotated[str, typer.Option(help="for a model created here")] = "",
                   as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Register a completed job's artifact as the model's next version (creating the model first if needed)."""
    client = TrainyardClient(api)
    try:
        client.model(name)
    except TrainyardError as e:
        if e.status != 404:
            raise
        try:
            client.create_model(name, description)
        except TrainyardError as created:
            if created.status != 409:  # 409: created meanwhile by someone else; register on it all the same
                raise
    v = client.register_version(name, job_id)
    if as_json:
        return _print_json(v)
    _line(f"{v['model']} v{v['version']} registered from job {v['job_id']}")


def _parity_rows(parity: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not parity:
        return []
    verdict = "passed" if parity.get("passed") else "FAILED"
    rows = [("parity", f"{verdict}: max_abs_diff {_num(parity.get('max_abs_diff'))} "
                       f"(tolerance {_num(parity.get('tolerance'))}) on {parity.get('n_rows')} rows")]
    if parity.get("metric"):
        rows.append(("metric", f"{parity['metric']}: native {_num(parity.get('metric_native'))}, "
                               f"onnx {_num(parity.get('metric_onnx'))}"))
    return rows


def _grid(rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, escape(value))
    console.print(grid)


@model_cli.command("show")
def model_show(name: str, version: Annotated[Optional[int], typer.Option("--version", "-v", help="one version")]
               = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A model and its versions; with --version: that version's lineage, ONNX artifact, parity and exports."""
    client = TrainyardClient(api)
    if version is None:
        m, vs = client.model(name), client.versions(name)
        if as_json:
            return _print_json({"model": m, "versions": vs["items"]})
        _grid([("model", m["name"]), ("description", m.get("description") or "-"),
               ("tags", ", ".join(m.get("tags") or []) or "-"), ("aliases", _aliases(m.get("aliases"))),
               ("latest", f"v{m['latest_version']}" if m.get("latest_version") else "-"),
               ("created", _when(m.get("created_at")))])
        table = Table(title=f"{len(vs['items'])} versions", title_justify="left", box=None)
        for col in ("version", "aliases", "onnx", "job_id", "final metrics"):
            table.add_column(col, no_wrap=col != "final metrics", overflow="fold")
        for v in vs["items"]:
            final = (v.get("lineage") or {}).get("final_metrics") or {}
            table.add_row(f"v{v['version']}", escape(", ".join(v.get("aliases") or [])) or "-",
                          "yes" if v.get("onnx") else "-", str(v["job_id"]),
                          escape(" ".join(f"{k}={_num(x)}" for k, x in sorted(final.items()))) or "-")
        console.print(table)
        return
    v = client.version(name, version)
    if as_json:
        return _print_json(v)
    lineage = v.get("lineage") or {}
    rows = [("version", f"{v['model']} v{v['version']}"), ("aliases", ", ".join(v.get("aliases") or []) or "-"),
            ("job_id", str(v["job_id"]))]
    if lineage.get("framework"):
        rows.append(("model", f"{lineage.get('framework')}/{lineage.get('task')}"))
    if lineage.get("final_metrics"):
        rows.append(("metrics", " ".join(f"{k}={_num(x)}" for k, x in sorted(lineage["final_metrics"].items()))))
    if onnx := v.get("onnx"):
        rows.append(("onnx", f"{onnx.get('uri')} (sha256 {str(onnx.get('sha256'))[:12]}…)"))
    else:
        rows.append(("onnx", "- (no passing export yet: trainyard export)"))
    rows += _parity_rows(v.get("parity"))
    rows.append(("created", _when(v.get("created_at"))))
    _grid(rows)
    if v.get("exports"):
        table = Table(title="exports", title_justify="left", box=None)
        for col in ("export_id", "status", "max_abs_diff", "error"):
            table.add_column(col, no_wrap=col != "error", overflow="fold")
        for e in v["exports"]:
            table.add_row(str(e["export_id"]), f"[{STATUS_STYLE.get(e['status'], 'white')}]{e['status']}[/]",
                          _num((e.get("parity") or {}).get("max_abs_diff")), escape(_cut(e.get("error") or "", 60)))
        console.print(table)


@model_cli.command("alias")
def model_alias(name: str, alias: str, version: int, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Point ALIAS (production, staging ...) at VERSION; moves it if it pointed elsewhere."""
    m = TrainyardClient(api).set_alias(name, alias, version)
    if as_json:
        return _print_json(m)
    _line(f"{m['name']}: {alias} → v{(m.get('aliases') or {}).get(alias, version)}")


@cli.command()
def export(name: str, version: int,
           tolerance: Annotated[Optional[float], typer.Option(help="largest allowed |onnx - native| "
                                                                   "(default 1e-4)")] = None,
           watch_it: Annotated[bool, typer.Option("--watch", help="follow it until it ends")] = False,
           as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Export a model version to ONNX, checking parity with the native model; prints the export id.

    With --watch: its status until it ends, then the parity figures (max_abs_diff, rows, metric native vs onnx).

    Exit 0 only when it completes; a failed export prints its error and exits 1."""
    client = TrainyardClient(api)
    out = client.export(name, version, tolerance)
    if not watch_it:
        return _print_json(out) if as_json else _line(str(out["export_id"]))
    if not as_json:
        _line(f"{out['export_id']} {out['status']}")
    done = _watch_export(client, name, version, str(out["export_id"]), out["status"], quiet=as_json)
    if as_json:
        _print_json(done)
    else:
        rows = [("status", done["status"])]
        if done.get("started_at") and done.get("finished_at"):
            rows[0] = ("status", f"{done['status']} {_when(done['finished_at'], done['started_at'], 'ran')}")
        rows += _parity_rows(done.get("parity"))
        if art := done.get("artifact"):
            rows.append(("onnx", str(art.get("uri"))))
        _grid(rows)
        if done["status"] != "completed":
            _line(f"export {done['status']}: {done.get('error') or 'no error given'}", "red")
    raise typer.Exit(0 if done["status"] == "completed" else 1)


def _watch_export(client: TrainyardClient, name: str, version: int, export_id: str, seen: str,
                  patience: float = WATCH_PATIENCE_S, quiet: bool = False) -> dict[str, Any]:
    """Poll the export until it ends, a line per status change; rides out an unreachable API or a 5xx for up to
    `patience` seconds of continuous failure."""
    down_since: float | None = None
    while True:
        time.sleep(EXPORT_POLL_S)
        try:
            e = client.get_export(name, version, export_id)
        except TrainyardError as err:
            now = time.monotonic()
            down_since = down_since if down_since is not None else now
            if not err.retryable or now - down_since >= patience:
                raise
            continue
        down_since = None
        if e["status"] != seen and not quiet and e["status"] not in FINISHED:
            _line(f"{export_id} {e['status']}" + (f" on {e['runner_id']}" if e.get("runner_id") else ""))
        seen = e["status"]
        if seen in FINISHED:
            return e


# ---- deployments --------------------------------------------------------------------------------------
def _variants(d: dict[str, Any]) -> str:
    """'a=churn v3 90%, b=churn v4 (staging) 10%'"""
    parts = [f"{v['name']}={v['model']} v{v['version']}" + (f" ({v['alias']})" if v.get("alias") else "")
             + f" {v['weight']}%" for v in d.get("variants") or []]
    return ", ".join(parts) or "-"


def _shadow(d: dict[str, Any]) -> str:
    s = d.get("shadow")
    return "-" if not s else f"{s['model']} v{s['version']}" + (f" ({s['alias']})" if s.get("alias") else "")


def _deployment_line(d: dict[str, Any]) -> None:
    state = "" if d.get("active", True) else " (inactive)"
    shadow = f"; shadow {_shadow(d)}" if d.get("shadow") else ""
    _line(f"{d['name']} revision {d['revision']}{state}: {_variants(d)}{shadow}")


def _read_json(source: str, inline: bool = False) -> Any:
    """A JSON document from a file, '-' (standard input) or, when `inline`, '@file' or the text itself; a missing
    file or bad JSON is the one-line error naming the file."""
    label = source
    try:
        if source == "-":
            label, text = "standard input", sys.stdin.read()
        elif inline and not source.startswith("@"):
            label, text = "the JSON given", source
        else:
            label = source[1:] if inline else source
            text = Path(label).read_text()
        return json.loads(text)
    except (OSError, ValueError) as e:
        detail = str(e) if isinstance(e, OSError) and label in str(e) else f"{label}: {e}"
        raise TrainyardError(None, {"title": "Invalid input", "detail": detail}) from None


@cli.command()
def deploy(file: Annotated[str, typer.Argument(help="a JSON deployment spec (POST /api/v1/deployments), "
                                                   "or - for standard input")],
           as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Deploy model versions as weighted variants, from a JSON spec.

    The spec: {"name", "variants": [{"name", "model", "version" | "alias", "weight"}], "shadow"?, "reason"?}."""
    d = TrainyardClient(api).deploy(_read_json(file))
    if as_json:
        return _print_json(d)
    _deployment_line(d)


@cli.command()
def deployments(active: Annotated[Optional[bool], typer.Option("--active/--inactive", help="only those")] = None,
                as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """List deployments: revision, variants and weights, shadow."""
    out = TrainyardClient(api).deployments(active)
    if as_json:
        return _print_json(out)
    table = Table(title=f"{len(out['items'])} deployments", box=None)
    for col in ("name", "rev", "active", "variants", "shadow"):
        table.add_column(col, no_wrap=col in ("name", "rev", "active"), overflow="fold")
    for d in out["items"]:
        table.add_row(escape(d["name"]), str(d["revision"]), "yes" if d["active"] else "[yellow]no[/yellow]",
                      escape(_variants(d)), escape(_shadow(d)))
    console.print(table)


@cli.command()
def deployment(name: str, show_history: Annotated[bool, typer.Option("--history", help="every revision")] = False,
               as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """One deployment's current revision; with --history every revision, oldest first (what changed, who, why)."""
    client = TrainyardClient(api)
    if show_history:
        h = client.history(name)
        if as_json:
            return _print_json(h)
        table = Table(title=f"{h['name']}: {len(h['revisions'])} revisions", title_justify="left", box=None)
        for col in ("rev", "change", "at", "by", "variants", "reason"):
            table.add_column(col, no_wrap=col in ("rev", "change", "at"), overflow="fold")
        for r in h["revisions"]:
            change = r["change"] + (f" to {r['rolled_back_to']}" if r.get("rolled_back_to") else "")
            table.add_row(str(r["revision"]), change, _when(r.get("at")), escape(r.get("actor") or "-"),
                          escape(_variants(r)), escape(r.get("reason") or "-"))
        console.print(table)
        return
    d = client.deployment(name)
    if as_json:
        return _print_json(d)
    _grid([("deployment", d["name"]), ("revision", str(d["revision"])),
           ("active", "yes" if d["active"] else "no"), ("shadow", _shadow(d)),
           ("updated", _when(d.get("updated_at")))])
    table = Table(box=None)
    for col in ("variant", "weight", "model", "version", "onnx"):
        table.add_column(col, no_wrap=col != "onnx", overflow="fold")
    for v in d["variants"]:
        table.add_row(escape(v["name"]), f"{v['weight']}%", escape(v["model"]),
                      f"v{v['version']}" + (f" ({escape(v['alias'])})" if v.get("alias") else ""),
                      escape(str((v.get("artifact") or {}).get("uri", "-"))))
    console.print(table)


def _weights(pairs: list[str]) -> dict[str, int]:
    """['a=90', 'b=10'] -> {'a': 90, 'b': 10}; anything else is a usage error (exit 2)."""
    weights: dict[str, int] = {}
    for pair in pairs:
        variant, eq, raw = pair.partition("=")
        variant, raw = variant.strip(), raw.strip()
        if not eq or not variant or not (raw.isascii() and raw.isdigit()) or int(raw) > 100:
            raise typer.BadParameter(f"{pair!r}: each is VARIANT=WEIGHT, an integer weight 0 to 100 (a=90 b=10)",
                                     param_hint="'WEIGHTS...'")
        if variant in weights:
            raise typer.BadParameter(f"{pair!r}: variant {variant!r} is given twice", param_hint="'WEIGHTS...'")
        weights[variant] = int(raw)
    return weights


ReasonOpt = Annotated[Optional[str], typer.Option(help="why (kept in the deployment's history)")]


@cli.command()
def traffic(name: str, pairs: Annotated[list[str], typer.Argument(metavar="WEIGHTS...",
                                                                  help="VARIANT=WEIGHT for every variant, "
                                                                       "summing to 100: a=90 b=10")],
            reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """New traffic weights for the deployment's variants (a new revision)."""
    weights = _weights(pairs)
    d = TrainyardClient(api).set_traffic(name, weights, reason)
    if as_json:
        return _print_json(d)
    _deployment_line(d)


@cli.command()
def promote(name: str, variant: str, reason: ReasonOpt = None, as_json: JsonOpt = False,
            api: ApiOpt = None) -> None:
    """The variant takes 100% of the traffic (a new revision)."""
    d = TrainyardClient(api).promote(name, variant, reason)
    if as_json:
        return _print_json(d)
    _deployment_line(d)


@cli.command()
def rollback(name: str, reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Back to the revision before the current one (as a new revision)."""
    d = TrainyardClient(api).rollback(name, reason)
    if as_json:
        return _print_json(d)
    _deployment_line(d)


@cli.command()
def undeploy(name: str, reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Stop serving the deployment (it takes no further change)."""
    d = TrainyardClient(api).undeploy(name, reason)
    if as_json:
        return _print_json(d)
    _deployment_line(d)


# ---- online A/B comparison, feedback and policy ---------------------------------------------------------------
class AbMetric(str, Enum):
    accuracy = "accuracy"
    logloss = "logloss"
    rmse = "rmse"
    mae = "mae"


SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 60  # the most points a sparkline draws (and the bucket choice aims for)
AB_BUCKETS_S = (60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 86400)
DECISION_STYLE = {"challenger_better": "green", "control_better": "red"}  # any other decision: yellow
FEEDBACK_BATCH = 10_000  # feedback items per POST (the API's limit)


def _f3(x: Any, signed: bool = False) -> str:
    return "-" if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"


def _with_ci(x: Any, ci: list[float] | None, signed: bool = False) -> str:
    """'0.871 [0.842, 0.897]'; signed: '+0.021 [+0.004, +0.038]'."""
    text = _f3(x, signed)
    return f"{text} [{_f3(ci[0], signed)}, {_f3(ci[1], signed)}]" if x is not None and ci else text


def _pvalue(p: Any) -> str:
    return "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _duration(s: int) -> str:
    """60 -> '1 min', 7200 -> '2 h', 30 -> '30 s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size and s % size == 0:
            return f"{s // size} {unit}"
    return f"{s} s"


def _ab_bucket(span_s: float) -> int:
    """The smallest bucket that draws `span_s` seconds in at most SPARK_WIDTH points (60 s for an hour)."""
    return next((b for b in AB_BUCKETS_S if span_s / b <= SPARK_WIDTH), AB_BUCKETS_S[-1])


def _sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """One block character per value, ▁ at the minimum, █ at the maximum (at most `width`: evenly picked values,
    the last always among them)."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK[3] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * len(SPARK)))] for v in values)


def _pairs(d: dict[str, Any], suffix: str = "") -> str:
    return ", ".join(f"{k}={v}{suffix}" for k, v in d.items()) or "-"


def _srm_lines(srm: dict[str, Any]) -> list[Text]:
    checks = srm.get("revisions") or []
    bad = [c for c in checks if c.get("mismatch")]
    if not bad and not srm.get("mismatch"):
        return [Text("sample ratio: ok" if checks else "sample ratio: - (no traffic yet)",
                     style="green" if checks else "")]
    if not bad:
        return [Text("sample ratio: MISMATCH", style="red")]
    lines = []
    for c in bad:
        text = (f"sample ratio: MISMATCH in revision {c.get('revision')}: observed {_pairs(c.get('observed') or {})} "
                f"vs weights {_pairs(c.get('weights') or {}, '%')}")
        if c.get("p_value") is not None:
            text += f" (chi-square p={c['p_value']:.2g})"
        if c.get("unexpected"):
            text += f"; traffic to weight-0 {', '.join(c['unexpected'])}"
        lines.append(Text(text, style="red"))
    return lines


def _shadow_line(sh: dict[str, Any], metric: str, control: str) -> Text:
    text = (f"shadow: agreement {_pct(sh.get('agreement'))} of {sh.get('compared', 0)} compared, "
            f"p99 {_ms(sh.get('latency_p99_ms'))} ms, {metric} {_with_ci(sh.get('value'), sh.get('ci'))}")
    vc = sh.get("versus_control") or {}
    if vc.get("difference") is not None:
        text += f", vs {control} {_f3(vc['difference'], True)} ({vc.get('decision')})"
    return Text(text)


def _spark_lines(report: dict[str, Any], series: dict[str, Any] | None) -> list[Text]:
    """Per challenger: its cumulative difference from the control over time, as a sparkline with min/max/now."""
    points = (series or {}).get("points") or []
    control = report.get("control")
    names = [c["challenger"] for c in report.get("comparisons") or []]
    for p in points:
        names += [n for n in p.get("comparisons") or {} if n not in names]
    bucket = _duration(int((series or {}).get("bucket_s") or 0))
    lines = []
    for name in names:
        values = [d for p in points if (d := ((p.get("comparisons") or {}).get(name) or {}).get("difference"))
                  is not None]
        if not values:
            continue
        lines.append(Text(f"{name} − {control}, cumulative ({bucket} buckets): min {_f3(min(values), True)}, "
                          f"max {_f3(max(values), True)}, now {_f3(values[-1], True)}"))
        lines.append(Text("  " + _sparkline(values), style="cyan"))
    return lines


def _ab_view(report: dict[str, Any], series: dict[str, Any] | None, note: Text | None = None) -> Group:
    """The report as rich renderables: a header, the variants, the comparisons, SRM, shadow, sparklines, method."""
    metric, control = report.get("metric", "accuracy"), report.get("control")
    variants = report.get("variants") or []
    first = variants[0] if variants else {}
    better = "higher" if first.get("higher_is_better", metric == "accuracy") else "lower"
    confidence = f"{100 * (first.get('confidence') or 0.95):.0f}%"
    window = report.get("window") or {}
    scope = f"revision {window['revision']} only" if window.get("revision") else "all revisions"
    parts: list[Any] = [Text(f"{report.get('deployment')} revision {report.get('revision')}: {metric} ({better} is "
                             f"better), control {control}, {scope}", style="bold")]

    table = Table(box=None, pad_edge=False)
    for col in ("variant", "weight", "requests", "labelled", "errors", "p50/95/99 ms", f"{metric} [{confidence} CI]"):
        table.add_column(col, justify="left" if col == "variant" else "right",
                         no_wrap=col.startswith(("p50", metric)), overflow="fold")
    for v in variants:
        latency = "/".join(_ms(v.get(f"latency_{q}_ms")) for q in ("p50", "p95", "p99"))
        table.add_row(Text(str(v.get("name")), style="bold" if v.get("name") == control else ""),
                      f"{v.get('weight', 0)}%", str(v.get("requests", 0)), str(v.get("labelled", 0)),
                      _pct(v.get("error_rate"), 2), latency, _with_ci(v.get("value"), v.get("ci")))
    parts.append(table)

    comparisons = report.get("comparisons") or []
    if comparisons:
        table = Table(box=None, pad_edge=False)
        for col in (f"vs {control}", f"difference [{confidence} CI]", "lift", "p-value", "decision"):
            table.add_column(col, justify="left" if col.startswith(("vs", "decision")) else "right",
                             no_wrap=col != "lift" and not col.startswith("vs"), overflow="fold")
        for c in comparisons:
            decision = str(c.get("decision"))
            table.add_row(str(c.get("challenger")), _with_ci(c.get("difference"), c.get("ci"), signed=True),
                          "-" if c.get("relative_difference") is None else f"{100 * c['relative_difference']:+.1f}%",
                          _pvalue(c.get("p_value")), Text(decision, style=DECISION_STYLE.get(decision, "yellow")))
        parts.append(table)

    parts += _srm_lines(report.get("srm") or {})
    if report.get("shadow"):
        parts.append(_shadow_line(report["shadow"], metric, str(control)))
    parts += _spark_lines(report, series)
    method = report.get("method") or first.get("method")
    if method:
        parts.append(Text(f"method: {method}; intervals and p-values valid at every look", style="dim"))
    if note is not None:
        parts.append(note)
    return Group(*parts)


def _epoch_s(ts: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(ts)).timestamp()
    except ValueError:
        return None


@cli.command()
def ab(name: str,
       metric: Annotated[AbMetric, typer.Option(help="the per-prediction metric compared")] = AbMetric.accuracy,
       revision: Annotated[Optional[int], typer.Option(min=1, help="only this revision's traffic")] = None,
       watch_it: Annotated[bool, typer.Option("--watch", help="redraw every --interval seconds until Ctrl-C")]
       = False,
       interval: Annotated[float, typer.Option(min=0.1, help="seconds between redraws with --watch")] = 5.0,
       as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The online A/B comparison of a deployment's variants (and its shadow).

    Per variant: weight, requests, labelled predictions, error rate, latency p50/p95/p99 and the metric with its
    always-valid confidence interval; per challenger against the control: the difference with its interval, the
    always-valid p-value and the decision; the sample-ratio check; the shadow's agreement; a sparkline of each
    challenger's cumulative difference over time.

    With --json: the raw report (with --watch, one line of it per look)."""
    client = TrainyardClient(api)
    m = metric.value
    if as_json:
        try:
            if not watch_it:
                return _print_json(client.ab_report(name, m, revision=revision))
            while True:
                try:
                    print(json.dumps(client.ab_report(name, m, revision=revision)), flush=True)
                except TrainyardError as e:
                    if not e.retryable:
                        raise
                    print(f"error: {e}; retrying", file=sys.stderr, flush=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return
    started = _epoch_s(client.deployment(name).get("created_at"))

    def look() -> tuple[dict[str, Any], dict[str, Any]]:
        report = client.ab_report(name, m, revision=revision)
        span = time.time() - started if started is not None else 3600.0
        return report, client.ab_timeseries(name, m, bucket=_ab_bucket(max(span, 1.0)), revision=revision)

    report, series = look()
    if not watch_it:
        console.print(_ab_view(report, series))
        return
    from rich.live import Live

    def footer(error: TrainyardError | None = None) -> Text:
        if error is None:
            return Text(f"updated {datetime.now():%H:%M:%S}; every {interval:g} s, Ctrl-C to stop", style="dim")
        why = "unreachable" if error.status is None else str(error.status)
        return Text(f"API {why} at {datetime.now():%H:%M:%S}: {error.detail or error.title}; showing the last "
                    f"look, retrying every {interval:g} s", style="yellow")

    try:
        with Live(_ab_view(report, series, footer()), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                try:
                    report, series = look()
                    note = footer()
                except TrainyardError as e:
                    if not e.retryable:
                        raise
                    note = footer(e)
                live.update(_ab_view(report, series, note))
    except KeyboardInterrupt:
        pass


@cli.command()
def feedback(name: str,
             file: Annotated[str, typer.Argument(help='a JSON list of {"request_id", "label" | "value"}, '
                                                      "or - for standard input")],
             as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Ground truth for earlier predictions: the true `label` (classification) or `value` (regression) per
    `request_id` (the id a prediction answered with). Prints how many were received, and how many name a prediction
    the deployment is known to have made (unknown ones are kept and count once their prediction lands)."""
    items = _read_json(file)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        label = "standard input" if file == "-" else file
        raise TrainyardError(None, {"title": "Invalid input", "detail": f'{label}: not a JSON list of '
                                                                        '{"request_id", "label" | "value"} objects'})
    client = TrainyardClient(api)
    total: dict[str, Any] = {"received": 0, "known": 0, "unknown": 0, "unknown_request_ids": []}
    for start in range(0, max(len(items), 1), FEEDBACK_BATCH):
        try:
            out = client.feedback(name, items[start:start + FEEDBACK_BATCH])
        except TrainyardError as e:
            if start == 0:
                raise
            raise TrainyardError(e.status, e.problem, f"{e} (the first {start} items were sent)") from None
        for key in ("received", "known", "unknown"):
            total[key] += int(out.get(key) or 0)
        total["unknown_request_ids"] += list(out.get("unknown_request_ids") or [])
    total["unknown_request_ids"] = total["unknown_request_ids"][:100]
    if as_json:
        return _print_json(total)
    _line(f"{name}: received {total['received']}, known {total['known']}, unknown {total['unknown']}")
    if total["unknown"]:
        shown = ", ".join(total["unknown_request_ids"][:10])
        more = f" and {total['unknown'] - min(10, len(total['unknown_request_ids']))} more" \
            if total["unknown"] > 10 else ""
        _line(f"unknown request ids (no prediction of {name} with them seen yet; they count once it lands): "
              f"{shown}{more}", "yellow")


def _policy_text(p: dict[str, Any] | None) -> str:
    """'accuracy; ramp 10%→25%→50%→100% every 300 s; min 500 labelled; p ≤ 0.05; p99 ≤ 50 ms' or 'none'."""
    if not p:
        return "none"
    parts = [str(p.get("metric", "accuracy"))]
    if p.get("ramp"):
        parts.append("ramp " + "→".join(f"{w}%" for w in p["ramp"])
                     + (f" every {p['step_every_s']} s" if p.get("step_every_s") is not None else ""))
    if p.get("min_samples") is not None:
        parts.append(f"min {p['min_samples']} labelled")
    if p.get("max_p_value") is not None:
        parts.append(f"p ≤ {p['max_p_value']:g}")
    if p.get("min_lift"):
        parts.append(f"lift ≥ {p['min_lift']:g}")
    if p.get("max_p99_latency_ms") is not None:
        parts.append(f"p99 ≤ {p['max_p99_latency_ms']:g} ms")
    if p.get("max_error_rate") is not None:
        parts.append(f"errors ≤ {100 * p['max_error_rate']:g}%")
    return "; ".join(parts)


@cli.command()
def policy(name: str,
           file: Annotated[Optional[str], typer.Argument(help="a JSON policy (metric, min_samples, min_lift, "
                                                              "max_p_value, max_p99_latency_ms, max_error_rate, "
                                                              "ramp, step_every_s), or - for standard input")]
           = None,
           clear: Annotated[bool, typer.Option("--clear", help="remove the deployment's policy")] = False,
           reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Attach or change the deployment's automatic policy (ramp the challenger up, promote it or roll it back on
    the online comparison), or remove it with --clear."""
    if clear == (file is not None):
        raise typer.BadParameter("give a policy file (or - for standard input) or --clear, one of them",
                                 param_hint="'FILE' / '--clear'")
    doc: Any = None
    if file is not None:
        doc = _read_json(file)
        if isinstance(doc, dict) and "policy" in doc and set(doc) <= {"policy", "reason"}:  # the PUT body itself
            reason = reason if reason is not None else doc.get("reason")
            doc = doc["policy"]
        if doc is not None and not isinstance(doc, dict):
            label = "standard input" if file == "-" else file
            raise TrainyardError(None, {"title": "Invalid input", "detail": f"{label}: not a JSON object (a policy)"})
    d = TrainyardClient(api).set_policy(name, doc, reason)
    if as_json:
        return _print_json(d)
    _deployment_line(d)
    _line(f"policy: {_policy_text(d.get('policy'))}")


# ---- inference API keys and predictions ---------------------------------------------------------------
key_cli = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, help="Inference API keys.")
cli.add_typer(key_cli, name="api-key")


@key_cli.command("create")
def key_create(name: str,
               deployment: Annotated[list[str], typer.Option("--deployment", "-d",
                                                             help="a deployment it may call (repeat; default all)")]
               = [],
               rate: Annotated[Optional[float], typer.Option("--rate", help="requests per second it may make")]
               = None,
               as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new inference API key; the key is shown this once (only its hash is kept)."""
    k = TrainyardClient(api).create_api_key(name, deployment or "*", rate)
    if as_json:
        return _print_json(k)
    _line(k["key"])
    scope = ", ".join(k.get("deployments") or []) or "-"
    rate_text = f", {_num(k['rate_limit_per_s'])}/s" if k.get("rate_limit_per_s") else ""
    console.print(Text(f"key {k['id']} ({k['name']}: {scope}{rate_text}). Keep it now: it is shown only this "
                       "once, the service keeps only its hash.", style="yellow"), soft_wrap=True, highlight=False)


@key_cli.command("list")
def key_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Inference API keys (their prefix, never the key)."""
    out = TrainyardClient(api).api_keys()
    if as_json:
        return _print_json(out)
    table = Table(title=f"{len(out['items'])} API keys", box=None)
    for col in ("id", "name", "prefix", "deployments", "rate", "state"):
        table.add_column(col, no_wrap=col in ("id", "prefix", "rate", "state"), overflow="fold",
                         min_width=36 if col == "id" else None)
    for k in out["items"]:
        state = "[red]revoked[/red]" if k.get("revoked_at") else "[green]active[/green]"
        table.add_row(str(k["id"]), escape(k["name"]), escape(k["prefix"]), escape(", ".join(k["deployments"])),
                      "-" if k.get("rate_limit_per_s") is None else f"{_num(k['rate_limit_per_s'])}/s", state)
    console.print(table)


@key_cli.command("revoke")
def key_revoke(key_id: str, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Revoke a key: inference servers refuse it within a second."""
    k = TrainyardClient(api).revoke_api_key(key_id)
    if as_json:
        return _print_json(k)
    _line(f"{k['id']} ({k['name']}) revoked")


@cli.command()
def predict(name: str,
            body: Annotated[str, typer.Option("--json", help='the request: \'{"instances": [[...]]}\' '
                                                             "(or just the instances list), @file.json or -")],
            key: Annotated[Optional[str], typer.Option(help="a routing key: the same key, the same variant")] = None,
            api_key: Annotated[Optional[str], typer.Option("--api-key", help="inference API key "
                                                                            "(default: $TRAINYARD_API_KEY)")] = None,
            inference: Annotated[Optional[str], typer.Option("--inference", help="inference server URL (default: "
                                                             "$TRAINYARD_INFERENCE_URL or :8001)")] = None) -> None:
    """Predict with a deployment on the inference server; prints the answer's JSON."""
    doc = _read_json(body, inline=True)
    if isinstance(doc, list):
        doc = {"instances": doc}
    if not isinstance(doc, dict) or "instances" not in doc:
        raise TrainyardError(None, {"title": "Invalid input",
                                    "detail": 'the request is {"instances": [...], "key"?: ...} or a list'})
    client = TrainyardClient(inference_url=inference, api_key=api_key)
    _print_json(client.predict(name, doc["instances"], key if key is not None else doc.get("key")))
