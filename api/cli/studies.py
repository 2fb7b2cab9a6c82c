"""Hyperparameter studies: `study create|watch|cancel`, `studies`."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli import ids
from api.cli.ids import StudyIdArg
from api.cli.app import ApiOpt, cli, connect, group
from api.cli.output import console, styled
from api.cli.watching import poll
from api.client import StreamNotServed, TrainyardClient, TrainyardError
from domain.vocabulary import STUDY_ENDED, StudyStatus, choices

study_cli = group("Hyperparameter studies.")


cli.add_typer(study_cli, name="study")


def _trials_table(st: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    """The study's title line and its last 30 trials (`rows`, by number); the study rides along as `.extra`."""
    best = st.get("best_trial") or {}
    counts = " ".join(f"{k} {v}" for k, v in st["counts"].items() if v)
    best_text = f"{float(best['value']):.6g} (trial {best['number']})" if best else "-"
    title = (f"{escape(st['name'])} {styled(st['status'])} "
             f"{len(rows)}/{st['n_trials']} trials ({counts or 'none yet'}); best {st['objective']['metric']} "
             f"{best_text}")
    table = Table(title=title, title_justify="left", box=None)
    for col in ("#", "state", "value", "params", "job_id"):
        table.add_column(col, no_wrap=col != "params", overflow="fold")
    for t in rows[-30:]:
        value = "-" if t["value"] is None else f"{float(t['value']):.6g}"
        if t["state"] == "pruned" and t.get("pruned_at_step") is not None:
            value = f"pruned@{t['pruned_at_step']}"
        table.add_row(str(t["number"]), styled(t["state"]), value,
                      escape(json.dumps(t["params"])), t["job_id"])
    table.extra = st  # type: ignore[attr-defined]
    return table


def _tables(client: TrainyardClient, study_id: str, interval: float) -> Iterator[Table]:
    """The table after each change, from the study's live stream (polled every `interval` seconds from an API
    without streams), until the study has ended; an API restart is waited out however long it takes."""
    st: dict[str, Any] | None = None
    trials: dict[int, dict[str, Any]] = {}
    try:
        for event, _, data in client.stream_study(study_id, patience=None):
            if event == "trial":
                trials[data["number"]] = data
            elif event == "study":
                st = data
            if event == "end" and (st is None or st["status"] not in STUDY_ENDED):
                st = client.study(study_id)  # (a server whose last "study" message may be older than its end)
            if st is not None and event in ("study", "end"):  # a read's trials come before its "study"
                yield _trials_table(st, [trials[n] for n in sorted(trials)])
        return
    except StreamNotServed:
        pass

    def look() -> Table:
        return _trials_table(client.study(study_id), client.trials(study_id, limit=1000)["items"])
    yield from poll(look, interval, patience=None)


def _watch_study(client: TrainyardClient, study_id: str, interval: float = 1.0) -> dict:
    """A live table of the study's trials until it ends."""
    from rich.live import Live

    tables = _tables(client, study_id, interval)
    table = next(tables)
    with Live(table, console=console, refresh_per_second=4) as live:
        while table.extra["status"] not in STUDY_ENDED:  # type: ignore[attr-defined]
            table = next(tables)
            live.update(table)
    tables.close()
    return table.extra  # type: ignore[attr-defined]


@study_cli.command("create")
def study_create(file: Annotated[str, typer.Argument(help="a JSON study spec, or - for standard input")],
                 idempotency_key: Annotated[Optional[str], typer.Option()] = None,
                 watch_it: Annotated[bool, typer.Option("--watch", help="a live table of trials until it ends")]
                 = False,
                 api: ApiOpt = None) -> None:
    """Create a study from a JSON spec (see POST /api/v1/studies); prints its id."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        body = json.loads(text)
    except (OSError, ValueError) as e:
        raise TrainyardError(None, {"title": "Invalid input", "detail": f"{file}: {e}"}) from None
    client = connect(api)
    out = client.create_study(body, idempotency_key)
    console.print(out["study_id"])
    if watch_it:
        st = _watch_study(client, out["study_id"])
        raise typer.Exit(0 if st["status"] == "completed" else 1)


@study_cli.command("watch")
def study_watch(study_id: StudyIdArg, api: ApiOpt = None) -> None:
    """A live table of the study's trials and its best value until it ends; exit 0 when it completed."""
    client = connect(api)
    st = _watch_study(client, ids.study_id(client, study_id))
    raise typer.Exit(0 if st["status"] == "completed" else 1)


@study_cli.command("cancel")
def study_cancel(study_id: StudyIdArg, api: ApiOpt = None) -> None:
    """Cancel a study: no new trials, running ones are cancelled; completed trials and the best are kept."""
    client = connect(api)
    st = client.cancel_study(ids.study_id(client, study_id))
    console.print(f"{st['study_id']} {st['status']}")


@cli.command()
def studies(status: Annotated[Optional[str], typer.Option(help=choices(StudyStatus))] = None, limit: int = 20,
            offset: int = 0, api: ApiOpt = None) -> None:
    """List studies, newest first."""
    out = connect(api).studies(status=status, limit=limit, offset=offset)
    table = Table(title=f"{out['total']} studies", box=None)
    for col in ("study_id", "status", "trials", "best", "objective", "name"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=36 if col == "study_id" else None)
    for st in out["items"]:
        done = sum(v for k, v in st["counts"].items() if k in ("completed", "pruned", "failed"))
        best = st.get("best_trial")
        table.add_row(st["study_id"], styled(st["status"]),
                      f"{done}/{st['n_trials']}", "-" if not best else f"{best['value']:.6g}",
                      f"{st['objective']['direction'][:3]} {st['objective']['metric']}", escape(st["name"]))
    console.print(table)
