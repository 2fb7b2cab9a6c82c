"""The `trainyard` command: run the service (`up`, `serve`, `runner`) and use it (`submit`, `watch`, `jobs`)."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.client import TrainyardClient, TrainyardError

cli = typer.Typer(no_args_is_help=True, help="Trainyard: event-sourced ML training service.")
console = Console()
FINISHED = ("completed", "failed", "cancelled")
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: endpoints.json or :8000)")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


@cli.command()
def up(data_dir: Annotated[Optional[Path], typer.Option(help="data dir (default ./.trainyard)")] = None,
       runners: Annotated[Optional[int], typer.Option(help="runner processes (default 2)")] = None) -> None:
    """Start the whole service on embedded defaults (or the TRAINYARD_*_URL servers) until Ctrl-C."""
    from infra.settings import Settings
    from infra.supervisor import run_up

    _logging()
    overrides = {k: v for k, v in {"data_dir": data_dir, "runners": runners}.items() if v is not None}
    raise typer.Exit(run_up(Settings(**overrides)))


@cli.command()
def serve() -> None:
    """API + relay + projectors + report handlers (started by `up`)."""
    from infra.serve import serve as run_serve
    from infra.settings import Settings

    _logging()
    asyncio.run(run_serve(Settings()))


@cli.command()
def runner() -> None:
    """One runner process (started by `up`)."""
    from infra.settings import Settings
    from runners.runner import run_runner

    _logging()
    asyncio.run(run_runner(Settings()))


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
    """Submit a training job; prints its id."""
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
    try:
        out = client.submit(body, idempotency_key)
    except TrainyardError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1)
    console.print(out["job_id"])
    if watch_it:
        _watch(client, out["job_id"])


def _watch(client: TrainyardClient, job_id: str, interval: float = 0.5) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), console=console) as bar:
        t = bar.add_task(job_id[:8], total=100, metrics="")
        while True:
            job = client.job(job_id)
            latest = " ".join(f"{n}={p['value']:.4g}" for n, p in client.metrics(job_id)["latest"].items())
            bar.update(t, completed=job["progress"]["percentage_complete"],
                       description=f"{job_id[:8]} {job['status']} a{job['attempt']}", metrics=latest)
            if job["status"] in FINISHED:
                break
            time.sleep(interval)
    console.print_json(data={k: job[k] for k in ("status", "final_metrics", "artifact", "error")})
    return job


@cli.command()
def watch(job_id: str, api: ApiOpt = None) -> None:
    """A live progress bar with the latest metrics, until the job ends."""
    job = _watch(TrainyardClient(api), job_id)
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


@cli.command()
def cancel(job_id: str, api: ApiOpt = None) -> None:
    """Cancel a queued or running job."""
    try:
        console.print_json(data=TrainyardClient(api).cancel(job_id))
    except TrainyardError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
