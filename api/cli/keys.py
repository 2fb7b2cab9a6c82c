"""Inference API keys and predictions: `api-key create|list|revoke`, `predict`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.cli import ids
from api.cli.ids import KeyIdArg
from api.cli.app import ApiOpt, JsonOpt, cli, connect, group, read_json
from api.cli.output import console, line, num, print_json
from api.client import TrainyardError

key_cli = group("Inference API keys.")
cli.add_typer(key_cli, name="api-key")


@key_cli.command("create")
def key_create(name: str,
               deployment: Annotated[list[str], typer.Option("--deployment", "-d",
                                                             help="a deployment it may call (repeat; '*' or "
                                                                  "none given: all)")]
               = [],
               rate: Annotated[Optional[float], typer.Option("--rate", help="requests per second it may make")]
               = None,
               as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new inference API key; the key is shown this once (only its hash is kept)."""
    if "*" in deployment and len(deployment) > 1:
        raise typer.BadParameter("'*' (every deployment) stands alone", param_hint="--deployment")
    # the API takes "*" itself, not a list holding it (a list holds deployment names)
    k = connect(api).create_api_key(name, "*" if deployment in ([], ["*"]) else deployment, rate)
    if as_json:
        return print_json(k)
    line(k["key"])
    scope = ", ".join(k.get("deployments") or []) or "-"
    rate_text = f", {num(k['rate_limit_per_s'])}/s" if k.get("rate_limit_per_s") else ""
    console.print(Text(f"key {k['id']} ({k['name']}: {scope}{rate_text}). Keep it now: it is shown only this "
                       "once, the service keeps only its hash.", style="yellow"), soft_wrap=True, highlight=False)


@key_cli.command("list")
def key_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Inference API keys (their prefix, never the key)."""
    out = connect(api).api_keys()
    if as_json:
        return print_json(out)
    table = Table(title=f"{len(out['items'])} API keys", box=None)
    for col in ("id", "name", "prefix", "deployments", "rate", "state"):
        table.add_column(col, no_wrap=col in ("id", "prefix", "rate", "state"), overflow="fold",
                         min_width=36 if col == "id" else None)
    for k in out["items"]:
        state = "[red]revoked[/red]" if k.get("revoked_at") else "[green]active[/green]"
        table.add_row(str(k["id"]), escape(k["name"]), escape(k["prefix"]), escape(", ".join(k["deployments"])),
                      "-" if k.get("rate_limit_per_s") is None else f"{num(k['rate_limit_per_s'])}/s", state)
    console.print(table)


@key_cli.command("revoke")
def key_revoke(key_id: KeyIdArg, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Revoke a key: inference servers refuse it within a second."""
    client = connect(api)
    k = client.revoke_api_key(ids.key_id(client, key_id))
    if as_json:
        return print_json(k)
    line(f"{k['id']} ({k['name']}) revoked")


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
    doc = read_json(body, inline=True)
    if isinstance(doc, list):
        doc = {"instances": doc}
    if not isinstance(doc, dict) or "instances" not in doc:
        raise TrainyardError(None, {"title": "Invalid input",
                                    "detail": 'the request is {"instances": [...], "key"?: ...} or a list'})
    client = connect(inference_url=inference, api_key=api_key)
    print_json(client.predict(name, doc["instances"], key if key is not None else doc.get("key")))
