"""`trainyard stats`: the queue and its capacity as tables (GET /api/v1/stats)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, JsonOpt, cli, connect
from api.cli.output import console, line, print_json, size, styled

STATUSES = ("queued", "running", "completed", "failed", "cancelled")


@cli.command()
def stats(window: Annotated[Optional[str], typer.Option(
              help="how far back durations and queue waits look: seconds, or 30m, 12h, 7d (default 7d)")] = None,
          as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The queue and its capacity: jobs by priority and status, the runners of the last hour (what they have, what
    runs now, how busy they were), utilisation over the last hour, duration and queue wait per framework and task."""
    out = connect(api).stats(window)
    if as_json:
        print_json(out)
        return
    jobs, use = out["jobs"], out["utilisation"]
    line(f"project {out['project']}: {jobs['queued']} queued, {jobs['running']} running, {jobs['total']} jobs")
    _priorities(jobs["by_priority"], datetime.fromisoformat(out["generated_at"]))
    share = f"; this project {use['project_busy_s'] / use['capacity_s']:.0%}" if use["capacity_s"] else ""
    line(f"utilisation, last hour: {_percent(use['utilisation'])} ({use['busy_s']:,.0f} busy of "
         f"{use['capacity_s']:,.0f} runner-seconds of {use['runners']} runner{'' if use['runners'] == 1 else 's'}"
         f"{share})")
    _runners(out["runners"])
    _timings(out["timings"], out["window_s"])


def _priorities(rows: list[dict[str, Any]], now: datetime) -> None:
    table = Table(title="jobs by priority", title_justify="left", box=None)
    for head in ("priority", *STATUSES, "total", "oldest queued"):
        table.add_column(styled(head) if head in STATUSES else head, justify="left" if head == "priority" else "right",
                         no_wrap=True)
    for r in rows:
        oldest = r["oldest_queued_at"]
        waited = "-" if oldest is None else _duration((now - datetime.fromisoformat(oldest)).total_seconds())
        table.add_row(r["priority"], *(str(r["counts"].get(s, 0)) for s in STATUSES), str(r["total"]), waited)
    console.print(table)


def _runners(rows: list[dict[str, Any]]) -> None:
    if not rows:
        line("no runner heard from in the last hour")
        return
    table = Table(title="runners, last hour", title_justify="left", box=None)
    for head in ("runner", "cpus", "memory", "gpus", "code", "live", "running", "busy", "utilisation"):
        table.add_column(head, justify="left" if head in ("runner", "gpus") else "right", no_wrap=True)
    for r in rows:
        gpus = "-" if r["gpus"] is None else f"{r['gpus']} {r['gpu_model'] or ''}".strip()
        running = str(r["running"]) + (f" ({len(r['running_jobs'])} yours)" if r["running_jobs"] else "")
        table.add_row(escape(r["runner_id"]), _or_dash(r["cpus"]),
                      "-" if r["memory_mb"] is None else size(r["memory_mb"] * 2**20), escape(gpus),
                      _yes_no(r["accepts_code"]), _yes_no(r["live"]), running, _duration(r["busy_s"]),
                      _percent(r["utilisation"]))
    console.print(table)


def _timings(rows: list[dict[str, Any]], window_s: int) -> None:
    if not rows:
        line(f"no job started or completed in the last {_duration(window_s)}")
        return
    table = Table(title=f"durations and queue waits, last {_duration(window_s)}", title_justify="left", box=None)
    for head in ("framework", "task", "completed", "mean", "p95", "started", "mean wait", "p95 wait"):
        table.add_column(head, justify="left" if head in ("framework", "task") else "right", no_wrap=True)
    for r in rows:
        table.add_row(escape(r["framework"]), escape(r["task"]), str(r["completed"]), _duration(r["duration_mean_s"]),
                      _duration(r["duration_p95_s"]), str(r["started"]), _duration(r["queue_wait_mean_s"]),
                      _duration(r["queue_wait_p95_s"]))
    console.print(table)


def _duration(s: float | None) -> str:
    """'-', '4.2 s', '12.5 min', '3.1 h', '2.0 d'."""
    if s is None:
        return "-"
    for unit, size_s in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size_s:
            return f"{s / size_s:.1f} {unit}"
    return f"{s:.1f} s"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _or_dash(x: Any) -> str:
    return "-" if x is None else str(x)


def _yes_no(x: bool | None) -> str:
    return "-" if x is None else "yes" if x else "no"
