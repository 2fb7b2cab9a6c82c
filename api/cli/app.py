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
from api.client import TrainyardClient, TrainyardError


class OneLineErrors(TyperGroup):
    """Every command: a TrainyardError (an API error answer, a bad job id, an unreachable API) is printed as one
    `error: ...` line and exits 1; never a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainyardError as e:
            console.print(Text(f"error: {e}", style="red"), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None


cli = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="Trainyard: event-sourced ML training service.")
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: endpoints.json or :8000)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the raw JSON answer")]
ReasonOpt = Annotated[Optional[str], typer.Option(help="why (kept in the deployment's history)")]


def group(help: str) -> typer.Typer:
    """A command group (`trainyard study ...`) with the same one-line errors."""
    return typer.Typer(cls=OneLineErrors, no_args_is_help=True, help=help)


def connect(api: str | None = None, **options: Any) -> TrainyardClient:
    """The client every command talks through (tests replace `TrainyardClient` here to script the answers)."""
    return TrainyardClient(api, **options)


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
