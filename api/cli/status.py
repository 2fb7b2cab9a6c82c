"""`trainyard status`: the service's readiness, engine by engine and stage by stage."""
from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, cli, connect
from api.cli.output import STATUS_STYLE, console, cut


@cli.command()
def status(api: ApiOpt = None) -> None:
    """Readiness: each engine and pipeline stage; exit 0 when ready, 1 otherwise.

    One row per engine check (postgres, nats, clickhouse) and per stage (relay, projectors, reconciler...)."""
    client = connect(api)
    code, body = client.ready()
    ready = code == 200 and bool(body.get("ready"))
    console.print(f"{'[green]ready[/green]' if ready else '[red]NOT READY[/red]'} ({escape(client.base_url)})")

    def show(heads: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        """Name, colored status, the other columns, and last the error, cut to what the others leave."""
        if not rows:
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:-1])]
        # a glance: one screen row per line even when piped (the whole errors are in /readyz's JSON)
        room = max(12, (console.width if console.is_terminal else 80) - 2 * (len(heads) - 1) - sum(widths))
        table = Table(box=None, pad_edge=False)
        for i, head in enumerate(heads):
            table.add_column(head, no_wrap=True, justify="left" if i < 2 or i == len(heads) - 1 else "right")
        for name, state, *middle, error in rows:
            table.add_row(escape(name), f"[{STATUS_STYLE.get(state, 'white')}]{escape(state)}[/]", *middle,
                          escape(cut(error, room)))
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
