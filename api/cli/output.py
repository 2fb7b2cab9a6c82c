"""How the CLI shows things: the console, status colours, tables of key/value rows and the small formatters
(times, durations, sizes, numbers) every command uses."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 100_000  # "no limit": a table's rows stay whole lines, whatever their length


class PipeFriendlyConsole(Console):
    """Rich's console, except that piped output (a file, `| grep`, a test) is not laid out for an 80-column
    terminal that is not there: rows are never cut or folded. On a terminal, the terminal's width."""

    @property
    def size(self) -> ConsoleDimensions:
        return super().size if self.is_terminal else ConsoleDimensions(PIPED_WIDTH, 25)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = PipeFriendlyConsole()
STATUS_STYLE = {"ok": "green", "starting": "cyan", "behind": "yellow", "stuck": "red", "error": "red",
                "completed": "green", "running": "cyan", "queued": "blue", "failed": "red", "cancelled": "yellow",
                "cancelling": "yellow", "pruned": "magenta"}


def styled(state: str) -> str:
    """The state in its colour, as rich markup."""
    return f"[{STATUS_STYLE.get(state, 'white')}]{state}[/]"


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"


def when(ts: str | None, since: str | None = None, what: str = "") -> str:
    """'2025-05-01 14:00:03' (local time) or, with `since`, '2025-05-01 14:00:03 (ran 2.9 s)'."""
    if not ts:
        return "-"
    at = datetime.fromisoformat(ts)
    text = at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} ({what} {(at - datetime.fromisoformat(since)).total_seconds():.1f} s)" if since else text


def size(n: int) -> str:
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def cut(text: Any, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def line(text: str, style: str | None = None) -> None:
    """One plain line (no markup, no highlighting, never wrapped)."""
    console.print(Text(text, style=style or ""), soft_wrap=True, highlight=False)


def num(x: Any) -> str:
    return "-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def grid(rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, escape(value))
    console.print(grid)
