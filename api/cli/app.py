"""The `trainyard` typer app, the options every command shares, the client it talks through and how it reads JSON
input. An API error or an unreachable API is one `error: ...` line and exit status 1; a malformed argument is a
usage error, exit status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from typer.core import TyperGroup

from api.cli.output import console
from api.client import TrainyardClient, TrainyardError, default_api_url, token_source


class OneLineErrors(TyperGroup):
    """Every command: a TrainyardError (an API error answer, a bad job id, an unreachable API) is printed as one
    `error: ...` line and exits 1; never a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainyardError as e:
            message = f"error: {e}"
            if _refused_credentials(e):
                message += f"; {_credentials_hint()}"
            console.print(Text(message, style="red"), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None


_last_api: list[str] = []  # the API the running command connected to (for the 401 hint)


def _refused_credentials(e: TrainyardError) -> bool:
    """A 401 of the REST API for the credentials sent (not a wrong password at login, not the inference server's
    answer about an inference key)."""
    instance = str(e.problem.get("instance") or "")
    return e.status == 401 and instance.startswith("/api/") and not instance.startswith("/api/v1/auth/token")


def _credentials_hint() -> str:
    """Which credential the API refused, and how to sign in."""
    source = token_source(_last_api[-1] if _last_api else default_api_url())
    if source is None:
        return "no credentials were sent: sign in with `trainyard login` (or set TRAINYARD_TOKEN)"
    if source == "TRAINYARD_TOKEN":
        return "the token sent came from TRAINYARD_TOKEN: set a valid one, or unset it and `trainyard login`"
    return f"the token sent came from {source}: sign in again with `trainyard login`"


cli = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="Trainyard: event-sourced ML training service.")
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: endpoints.json or :8000)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the raw JSON answer")]
ReasonOpt = Annotated[Optional[str], typer.Option(help="why (kept in the deployment's history)")]


def group(help: str) -> typer.Typer:
    """A command group (`trainyard study ...`) with the same one-line errors."""
    return typer.Typer(cls=OneLineErrors, no_args_is_help=True, help=help)


def connect(api: str | None = None, **options: Any) -> TrainyardClient:
    """The client every command talks through (tests replace `TrainyardClient` here to script the answers)."""
    client = TrainyardClient(api, **options)
    _last_api[:] = [client.base_url]
    return client


def read_json(source: str, inline: bool = False) -> Any:
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
