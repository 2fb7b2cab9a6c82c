"""Code bundles: `code push DIR`, `code list`, `code show ID`; and `run DIR`: pack, upload and submit in one go."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.cli.app import ApiOpt, JsonOpt, cli, connect, group
from api.cli.output import console, grid, line, print_json, size, when
from api.cli.jobs import _watch, parse_params
from api.client import TrainyardClient, TrainyardError
from domain.vocabulary import Priority, Task, choices

code_cli = group("Code bundles: your training code, packed and uploaded once per content.")
cli.add_typer(code_cli, name="code")


@code_cli.command("push")
def code_push(folder: Annotated[Path, typer.Argument(help="the project folder (or a .tar.gz/.zip file)")],
              name: Annotated[Optional[str], typer.Option(help="a name to remember it by")] = None,
              as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Pack FOLDER (honouring its .gitignore files; .git, __pycache__ and .venv left out) and upload it, unless
    the project already has the same bytes. Prints the code_id."""
    if not folder.exists():
        raise typer.BadParameter(f"{folder} does not exist", param_hint="FOLDER")
    bundle, uploaded = connect(api).push_code(folder, name)
    if as_json:
        return print_json({**bundle, "uploaded": uploaded})
    line(bundle["code_id"])
    what = "uploaded" if uploaded else "already uploaded"
    console.print(Text(f"{what}: {bundle['files']} files, {size(bundle['size_bytes'])} "
                       f"({size(bundle['unpacked_bytes'])} unpacked); entrypoints: "
                       f"{', '.join(bundle['entrypoints']) or '-'}", style="dim"), soft_wrap=True, highlight=False)


@cli.command("run")
def run_folder(
    folder: Annotated[Path, typer.Argument(help="the project folder (or a .tar.gz/.zip file)")],
    entry: Annotated[str, typer.Option(help="the script to run: a .py file at the top of the folder")] = "train.py",
    param: Annotated[list[str], typer.Option("--param", "-p", help="name=value, the script's run.params (value "
                                                                   "parsed as JSON; repeat)")] = [],
    dataset: Annotated[Optional[str], typer.Option(help="builtin://breast_cancer | file:///abs/data.csv ... "
                                                        "(run.dataset_path)")] = None,
    target: Annotated[Optional[str], typer.Option(help="target column (file:// datasets)")] = None,
    task: Annotated[str, typer.Option(help=choices(Task))] = Task.BINARY_CLASSIFICATION.value,
    name: Annotated[Optional[str], typer.Option(help="the job's name (default: the folder's)")] = None,
    arg: Annotated[list[str], typer.Option("--arg", help="an argument of the script (repeat)")] = [],
    cpus: Annotated[Optional[int], typer.Option(help="its CPUs (default 1)")] = None,
    memory_mb: Annotated[Optional[int], typer.Option(help="its memory limit in MB (default 2048)")] = None,
    priority: Annotated[str, typer.Option(help=choices(Priority))] = Priority.MEDIUM.value,
    tag: Annotated[list[str], typer.Option("--tag")] = [],
    watch_it: Annotated[bool, typer.Option("--watch", help="watch it until it ends")] = False,
    api: ApiOpt = None,
) -> None:
    """Run FOLDER's ENTRY as a code job: pack the folder (as `code push`: its .gitignore files honoured), upload it
    unless the project already has the same bytes, and submit; prints the job's id (with --watch: follows it as
    `watch` does, exit 0 only when it completes)."""
    if not folder.exists():
        raise typer.BadParameter(f"{folder} does not exist", param_hint="FOLDER")
    params = parse_params(param)
    client = connect(api)
    bundle, uploaded = client.push_code(folder, name)
    console.print(Text(f"{'uploaded' if uploaded else 'already uploaded'}: code {bundle['code_id']}, "
                       f"{bundle['files']} files, {size(bundle['size_bytes'])}", style="dim"),
                  soft_wrap=True, highlight=False)
    body: dict[str, Any] = {"name": (name or folder.resolve().name or "code")[:200], "framework": "python",
                            "task": task, "params": params, "priority": priority, "tags": tag,
                            "code": {"code_id": bundle["code_id"], "entrypoint": entry, "args": arg}}
    if dataset:
        body["dataset"] = {"uri": dataset, **({"target": target} if target else {})}
    limits = {k: v for k, v in (("cpus", cpus), ("memory_mb", memory_mb)) if v is not None}
    if limits:
        body["resources"] = limits
    out = client.submit(body)
    line(out["job_id"])
    if watch_it:
        job = _watch(client, out["job_id"], submitted=True)
        raise typer.Exit(0 if job["status"] == "completed" else 1)


@code_cli.command("list")
def code_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The project's code bundles, newest first."""
    out = connect(api).list_code()
    if as_json:
        return print_json(out)
    table = Table(title=f"{len(out['items'])} code bundles", box=None)
    for col in ("code_id", "files", "size", "entrypoints", "name", "created"):
        table.add_column(col, no_wrap=col != "entrypoints", overflow="fold")
    for b in out["items"]:
        table.add_row(b["code_id"], str(b["files"]), size(b["size_bytes"]), escape(", ".join(b["entrypoints"])) or "-",
                      escape(b["filename"]), when(b["created_at"]))
    console.print(table)


@code_cli.command("show")
def code_show(code_id: Annotated[str, typer.Argument(help="the code_id, or 8 or more of its first hex digits")],
              as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """One code bundle."""
    client = connect(api)
    b = client.get_code(_full_id(client, code_id))
    if as_json:
        return print_json(b)
    grid([("code_id", b["code_id"]), ("sha256", b["sha256"]), ("format", b["format"]),
          ("files", str(b["files"])), ("size", f"{size(b['size_bytes'])} ({size(b['unpacked_bytes'])} unpacked)"),
          ("entrypoints", ", ".join(b["entrypoints"]) or "-"), ("name", b["filename"]),
          ("created", when(b["created_at"]))])


def _full_id(client: TrainyardClient, given: str) -> str:
    """A whole code_id as given, or the one bundle of the project whose id starts with the 8-31 digits given."""
    given = given.strip().lower()
    if len(given) == 32 or not re.fullmatch(r"[0-9a-f]{8,31}", given):
        return given  # the API names what is wrong with it
    matches = [b["code_id"] for b in client.list_code()["items"] if b["code_id"].startswith(given)]
    if len(matches) == 1:
        return matches[0]
    detail = (f"no code bundle starts with {given}" if not matches else
              f"{len(matches)} code bundles start with {given}: {', '.join(matches[:5])}")
    raise TrainyardError(404 if not matches else 422, {"title": "Not found" if not matches else "Ambiguous id",
                                                       "field": "code_id", "detail": detail})
