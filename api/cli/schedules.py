"""Schedules: `schedule create|list|show|runs|update|pause|resume|trigger|delete`."""
from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, JsonOpt, cli, connect, group, read_json
from api.cli.output import console, styled
from api.client import TrainyardClient, TrainyardError

schedule_cli = group("Schedules: a job or study run on a cron expression in a timezone.")
cli.add_typer(schedule_cli, name="schedule")
PATH = "/api/v1/schedules"


def _call(client: TrainyardClient, method: str, path: str = "", **kw: Any) -> Any:
    return client._call(method, PATH + path, **kw)


def _print(s: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(s))
        return
    console.print(f"{s['id']} {escape(s['name'])} {styled(s['status'])}: {s['kind']} on '{escape(s['cron'])}' "
                  f"({s['timezone']}), overlap {s['overlap']}, catch_up {s['catch_up']}; next "
                  f"{s['next_fire_at'] or '-'}; fired {s['fired']}, skipped {s['skipped']}, missed {s['missed']}")


@schedule_cli.command("create")
def create(file: Annotated[str, typer.Argument(help="a JSON schedule (see POST /api/v1/schedules), or - for "
                                                    "standard input")],
           idempotency_key: Annotated[Optional[str], typer.Option()] = None, api: ApiOpt = None) -> None:
    """Create a schedule; prints its id."""
    body = read_json(file)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    console.print(_call(connect(api), "POST", json=body, headers=headers)["id"])


@schedule_cli.command("list")
def list_(limit: int = 50, offset: int = 0, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """The project's schedules, newest first."""
    out = _call(connect(api), "GET", params={"limit": limit, "offset": offset})
    if as_json:
        console.print_json(json.dumps(out))
        return
    table = Table(title=f"{out['total']} schedules", box=None)
    for col in ("id", "name", "status", "cron", "timezone", "kind", "next", "fired", "skipped", "missed"):
        table.add_column(col, no_wrap=True)
    for s in out["items"]:
        table.add_row(s["id"], escape(s["name"]), styled(s["status"]), escape(s["cron"]), s["timezone"], s["kind"],
                      s["next_fire_at"] or "-", str(s["fired"]), str(s["skipped"]), str(s["missed"]))
    console.print(table)


@schedule_cli.command("show")
def show(schedule_id: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """One schedule: its cron, policies, next time and counts."""
    _print(_call(connect(api), "GET", f"/{schedule_id}"), as_json)


@schedule_cli.command("runs")
def runs(schedule_id: str, limit: int = 50, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """The times the schedule handled, newest first: fired (with the run), skipped or missed, and why."""
    out = _call(connect(api), "GET", f"/{schedule_id}/runs", params={"limit": limit})
    if as_json:
        console.print_json(json.dumps(out))
        return
    table = Table(title=f"{out['total']} handled", box=None)
    for col in ("scheduled_for", "outcome", "trigger", "run_id", "reason"):
        table.add_column(col, no_wrap=col != "reason", overflow="fold")
    for r in out["items"]:
        when = r["scheduled_for"] if r["count"] == 1 else f"{r['scheduled_for']} … {r['last_scheduled_for']} ({r['count']})"
        table.add_row(when, styled(r["outcome"]), r["trigger"], r["run_id"] or "-", escape(r["reason"]))
    console.print(table)


@schedule_cli.command("update")
def update(schedule_id: str, cron: Optional[str] = None, timezone: Optional[str] = None,
           overlap: Annotated[Optional[str], typer.Option(help="skip | queue | cancel_previous")] = None,
           catch_up: Annotated[Optional[str], typer.Option(help="none | latest | all")] = None,
           name: Optional[str] = None,
           template: Annotated[Optional[str], typer.Option(help="a JSON file with a new `job` or `study`")] = None,
           api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Change what is given; a new cron or timezone counts from now."""
    body = {k: v for k, v in {"cron": cron, "timezone": timezone, "overlap": overlap, "catch_up": catch_up,
                               "name": name}.items() if v is not None}
    if template:
        body.update(read_json(template))
    _print(_call(connect(api), "PATCH", f"/{schedule_id}", json=body), as_json)


@schedule_cli.command("pause")
def pause(schedule_id: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """No time fires while paused."""
    _print(_call(connect(api), "POST", f"/{schedule_id}/pause"), as_json)


@schedule_cli.command("resume")
def resume(schedule_id: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Active again from now (what the pause passed is not caught up)."""
    _print(_call(connect(api), "POST", f"/{schedule_id}/resume"), as_json)


@schedule_cli.command("trigger")
def trigger(schedule_id: str, idempotency_key: Annotated[Optional[str], typer.Option()] = None,
            api: ApiOpt = None) -> None:
    """Run the template now (under the overlap policy); prints the run's id, or why it was skipped."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    out = _call(connect(api), "POST", f"/{schedule_id}/trigger", headers=headers)
    console.print(out["run_id"] if out["outcome"] == "fired" else f"skipped: {escape(out['reason'])}")
    if out["outcome"] != "fired":
        raise typer.Exit(1)


@schedule_cli.command("delete")
def delete(schedule_id: str, api: ApiOpt = None) -> None:
    """No more runs (those already submitted go on)."""
    r = connect(api)._request("DELETE", f"{PATH}/{schedule_id}")
    if r.status_code >= 400:
        raise TrainyardError(r.status_code, r.json())
    console.print(f"{schedule_id} deleted")
