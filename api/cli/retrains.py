"""Retrains: `retrain` (a deployment's variant trained again on new data, judged by a gate) and `retrains`."""
from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, JsonOpt, cli, connect
from api.cli.jobs import parse_params
from api.cli.output import console, print_json

SETTLED = ("job_failed", "gate_failed", "passed", "registered", "challenger_added", "challenger_failed")


def retrain_line(r: dict[str, Any]) -> None:
    console.print(f"retrain [bold]{r['id']}[/] of {escape(r['deployment'])}/{escape(r['variant'])} "
                  f"({escape(r['model'])} v{r['model_version']}): [bold]{r['status']}[/] (job {r['job_id']})")
    if r.get("reason"):
        console.print(f"  {escape(r['reason'])}")
    if r.get("registered_version"):
        console.print(f"  registered {escape(r['register_as'])} v{r['registered_version']}"
                      + (f", challenger {escape(r['challenger_variant'])}" if r.get("challenger_variant") else ""))
    if r.get("error"):
        console.print(f"  [red]{escape(r['error'])}[/]")


@cli.command()
def retrain(
    deployment: str,
    variant: Annotated[Optional[str], typer.Option(help="the variant retrained (default: the control)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="the new data's uri (default: the version's dataset)")] = None,
    target: Annotated[Optional[str], typer.Option(help="its target column")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="name=value over the version's params "
                                                                   "(value parsed as JSON; repeat)")] = [],
    gate: Annotated[Optional[str], typer.Option(help="the metric the gate judges on the test split (auc, rmse, …)")
                    ] = None,
    min_value: Annotated[Optional[float], typer.Option(help="the value the new model must reach")] = None,
    max_regression: Annotated[Optional[float], typer.Option(help="how much worse than the deployed version it may "
                                                                 "be on the same rows (0: at least as good)")] = None,
    register_as: Annotated[Optional[str], typer.Option(help="register a pass as this model's next version")] = None,
    challenger_weight: Annotated[Optional[int], typer.Option(help="with --register-as: export it and add it to the "
                                                                  "deployment at this weight")] = None,
    watch: Annotated[bool, typer.Option(help="wait until the retrain settles; exit 1 unless it passed")] = False,
    as_json: JsonOpt = False, api: ApiOpt = None,
) -> None:
    """Retrain a deployment's variant on new data; with a gate, register the result only if it is good enough."""
    body: dict[str, Any] = {"params": parse_params(param)}
    if variant:
        body["variant"] = variant
    if dataset:
        body["dataset"] = {"uri": dataset, **({"target": target} if target else {})}
    if gate:
        body["gate"] = {"metric": gate, **({"min_value": min_value} if min_value is not None else {}),
                        **({"max_regression": max_regression} if max_regression is not None else {})}
    if register_as:
        body["register_as"] = register_as
    if challenger_weight is not None:
        body["challenger"] = {"weight": challenger_weight}
    client = connect(api)
    r = client.retrain(deployment, body)
    while watch and r["status"] not in SETTLED:
        time.sleep(1.0)
        r = client.retrains(deployment, r["id"])
    if as_json:
        print_json(r)
    else:
        retrain_line(r)
    if watch and r["status"] in ("job_failed", "gate_failed", "challenger_failed"):
        raise typer.Exit(1)


@cli.command()
def retrains(deployment: str, retrain_id: Annotated[Optional[str], typer.Argument(help="one retrain's id")] = None,
             as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The deployment's retrains, newest first (or one, with the gate's verdict and its figures)."""
    client = connect(api)
    if retrain_id is not None:
        r = client.retrains(deployment, retrain_id)
        return print_json(r) if as_json else retrain_line(r)
    out = client.retrains(deployment)
    if as_json:
        return print_json(out)
    table = Table("id", "variant", "from", "status", "version", "reason", box=None)
    for r in out["items"]:
        table.add_row(r["id"][:8], escape(r["variant"]), f"{escape(r['model'])} v{r['model_version']}", r["status"],
                      str(r.get("registered_version") or ""), escape((r.get("reason") or "")[:80]))
    console.print(table)
