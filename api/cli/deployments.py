"""Deployments: `deploy`, `deployments`, `deployment`, `traffic`, `promote`, `rollback`, `undeploy`."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, JsonOpt, ReasonOpt, cli, connect, read_json
from api.cli.output import console, grid, line, print_json, when


def policy_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The policy, where each challenger stands on its ramp and what the last evaluation saw and decided."""
    policy = d.get("policy")
    if not policy:
        return [("policy", "none")]
    rows = [("policy", f"{policy.get('metric')}, ramp {' → '.join(f'{w}%' for w in policy.get('ramp') or [])}, "
                       f"a step every {policy.get('step_every_s')} s, {policy.get('min_samples')} labelled per side")]
    state = d.get("policy_state") or {}
    for s in state.get("steps") or []:
        rows.append((f"  {s['variant']}", "halted by the policy" if s["halted"] else
                     f"{s['weight']}%: ramp step {s['step']} of {s['of']}"))
    last = state.get("last_evaluation")
    if last is None:
        rows.append(("last evaluation", "none yet"))
    else:
        figures = last.get("figures") or {}
        seen = ", ".join(f"{v} {f.get('labelled', 0)} labelled/{f.get('requests', 0)} requests"
                         for v, f in (figures.get("current") or {}).items())
        rows += [("last evaluation", f"{when(last['at'])} on revision {last['revision']}: {last['decision']}"),
                 ("  why", last.get("reason") or "-"),
                 ("  saw", f"{seen or 'no traffic at this revision'}; "
                           f"{figures.get('seconds_at_revision', 0):.0f} s at the revision")]
    return rows


def _variants(d: dict[str, Any]) -> str:
    """'a=churn v3 90%, b=churn v4 (staging) 10%'"""
    parts = [f"{v['name']}={v['model']} v{v['version']}" + (f" ({v['alias']})" if v.get("alias") else "")
             + f" {v['weight']}%" for v in d.get("variants") or []]
    return ", ".join(parts) or "-"


def _shadow(d: dict[str, Any]) -> str:
    s = d.get("shadow")
    return "-" if not s else f"{s['model']} v{s['version']}" + (f" ({s['alias']})" if s.get("alias") else "")


def deployment_line(d: dict[str, Any]) -> None:
    state = "" if d.get("active", True) else " (inactive)"
    shadow = f"; shadow {_shadow(d)}" if d.get("shadow") else ""
    line(f"{d['name']} revision {d['revision']}{state}: {_variants(d)}{shadow}")


@cli.command()
def deploy(file: Annotated[str, typer.Argument(help="a JSON deployment spec (POST /api/v1/deployments), "
                                                   "or - for standard input")],
           as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Deploy model versions as weighted variants, from a JSON spec.

    The spec: {"name", "variants": [{"name", "model", "version" | "alias", "weight"}], "shadow"?, "reason"?}."""
    d = connect(api).deploy(read_json(file))
    if as_json:
        return print_json(d)
    deployment_line(d)


@cli.command()
def deployments(active: Annotated[Optional[bool], typer.Option("--active/--inactive", help="only those")] = None,
                as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """List deployments: revision, variants and weights, shadow."""
    out = connect(api).deployments(active)
    if as_json:
        return print_json(out)
    table = Table(title=f"{len(out['items'])} deployments", box=None)
    for col in ("name", "rev", "active", "variants", "shadow"):
        table.add_column(col, no_wrap=col in ("name", "rev", "active"), overflow="fold")
    for d in out["items"]:
        table.add_row(escape(d["name"]), str(d["revision"]), "yes" if d["active"] else "[yellow]no[/yellow]",
                      escape(_variants(d)), escape(_shadow(d)))
    console.print(table)


@cli.command()
def deployment(name: str, show_history: Annotated[bool, typer.Option("--history", help="every revision")] = False,
               as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """One deployment's current revision; with --history every revision, oldest first (what changed, who, why)."""
    client = connect(api)
    if show_history:
        h = client.history(name)
        if as_json:
            return print_json(h)
        table = Table(title=f"{h['name']}: {len(h['revisions'])} revisions", title_justify="left", box=None)
        for col in ("rev", "change", "at", "by", "variants", "reason"):
            table.add_column(col, no_wrap=col in ("rev", "change", "at"), overflow="fold")
        for r in h["revisions"]:
            change = r["change"] + (f" to {r['rolled_back_to']}" if r.get("rolled_back_to") else "")
            table.add_row(str(r["revision"]), change, when(r.get("at")), escape(r.get("actor") or "-"),
                          escape(_variants(r)), escape(r.get("reason") or "-"))
        console.print(table)
        grid(policy_rows(client.deployment(name)))  # the policy sets no revision: shown beside the history
        return
    d = client.deployment(name)
    if as_json:
        return print_json(d)
    grid([("deployment", d["name"]), ("revision", str(d["revision"])),
           ("active", "yes" if d["active"] else "no"), ("shadow", _shadow(d)),
           ("updated", when(d.get("updated_at"))), *policy_rows(d)])
    table = Table(box=None)
    for col in ("variant", "weight", "model", "version", "onnx"):
        table.add_column(col, no_wrap=col != "onnx", overflow="fold")
    for v in d["variants"]:
        table.add_row(escape(v["name"]), f"{v['weight']}%", escape(v["model"]),
                      f"v{v['version']}" + (f" ({escape(v['alias'])})" if v.get("alias") else ""),
                      escape(str((v.get("artifact") or {}).get("uri", "-"))))
    console.print(table)


def _weights(pairs: list[str]) -> dict[str, int]:
    """['a=90', 'b=10'] -> {'a': 90, 'b': 10}; anything else is a usage error (exit 2)."""
    weights: dict[str, int] = {}
    for pair in pairs:
        variant, eq, raw = pair.partition("=")
        variant, raw = variant.strip(), raw.strip()
        if not eq or not variant or not (raw.isascii() and raw.isdigit()) or int(raw) > 100:
            raise typer.BadParameter(f"{pair!r}: each is VARIANT=WEIGHT, an integer weight 0 to 100 (a=90 b=10)",
                                     param_hint="'WEIGHTS...'")
        if variant in weights:
            raise typer.BadParameter(f"{pair!r}: variant {variant!r} is given twice", param_hint="'WEIGHTS...'")
        weights[variant] = int(raw)
    return weights


@cli.command()
def traffic(name: str, pairs: Annotated[list[str], typer.Argument(metavar="WEIGHTS...",
                                                                  help="VARIANT=WEIGHT for every variant, "
                                                                       "summing to 100: a=90 b=10")],
            reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """New traffic weights for the deployment's variants (a new revision)."""
    weights = _weights(pairs)
    d = connect(api).set_traffic(name, weights, reason)
    if as_json:
        return print_json(d)
    deployment_line(d)


@cli.command()
def promote(name: str, variant: str, reason: ReasonOpt = None, as_json: JsonOpt = False,
            api: ApiOpt = None) -> None:
    """The variant takes 100% of the traffic (a new revision)."""
    d = connect(api).promote(name, variant, reason)
    if as_json:
        return print_json(d)
    deployment_line(d)


@cli.command()
def rollback(name: str, reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Back to the revision before the current one (as a new revision)."""
    d = connect(api).rollback(name, reason)
    if as_json:
        return print_json(d)
    deployment_line(d)


@cli.command()
def undeploy(name: str, reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Stop serving the deployment (it takes no further change)."""
    d = connect(api).undeploy(name, reason)
    if as_json:
        return print_json(d)
    deployment_line(d)
