"""The model registry and ONNX exports: `models`, `model register|show|alias`, `export`."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.cli import ids
from api.cli.app import ApiOpt, JsonOpt, cli, connect, group
from api.cli.output import console, cut, grid, line, num, print_json, styled, when
from api.cli.watching import WATCH_PATIENCE_S, poll
from api.client import TrainyardClient, TrainyardError
from domain.vocabulary import FINISHED

model_cli = group("Registered models and their versions.")
cli.add_typer(model_cli, name="model")
EXPORT_POLL_S = 1.0  # how often `export --watch` reads the export


def _aliases(aliases: dict[str, int] | None) -> str:
    return ", ".join(f"{a}→v{v}" for a, v in sorted((aliases or {}).items())) or "-"


@cli.command()
def models(limit: int = 50, offset: int = 0, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """List registered models: latest version, aliases, tags."""
    out = connect(api).models(limit=limit, offset=offset)
    if as_json:
        return print_json(out)
    table = Table(title=f"{out['total']} models", box=None)
    for col in ("name", "latest", "aliases", "tags", "description"):
        table.add_column(col, no_wrap=col != "description", overflow="ellipsis")
    for m in out["items"]:
        table.add_row(escape(m["name"]), f"v{m['latest_version']}" if m["latest_version"] else "-",
                      escape(_aliases(m.get("aliases"))), escape(", ".join(m.get("tags") or [])) or "-",
                      escape(cut(m.get("description") or "", 50)))
    console.print(table)


@model_cli.command("register")
def model_register(job_id: Annotated[str, typer.Argument(help=f"a completed training job: {ids.SHORT}")],
                   name: Annotated[str, typer.Option("--name", help="the model (created if it does not exist)")],
                   description: Annotated[str, typer.Option(help="for a model created here")] = "",
                   as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Register a completed job's artifact as the model's next version (creating the model first if needed)."""
    client = connect(api)
    job_id = ids.job_id(client, job_id)  # before the model is made: a wrong id creates nothing
    try:
        client.model(name)
    except TrainyardError as e:
        if e.status != 404:
            raise
        try:
            client.create_model(name, description)
        except TrainyardError as created:
            if created.status != 409:  # 409: created meanwhile by someone else; register on it all the same
                raise
    v = client.register_version(name, job_id)
    if as_json:
        return print_json(v)
    line(f"{v['model']} v{v['version']} registered from job {v['job_id']}")


def _parity_rows(parity: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not parity:
        return []
    verdict = "passed" if parity.get("passed") else "FAILED"
    rows = [("parity", f"{verdict}: max_abs_diff {num(parity.get('max_abs_diff'))} "
                       f"(tolerance {num(parity.get('tolerance'))}) on {parity.get('n_rows')} rows")]
    if parity.get("metric"):
        rows.append(("metric", f"{parity['metric']}: native {num(parity.get('metric_native'))}, "
                               f"onnx {num(parity.get('metric_onnx'))}"))
    return rows


@model_cli.command("show")
def model_show(name: str, version: Annotated[Optional[int], typer.Option("--version", "-v", help="one version")]
               = None, as_json: JsonOpt = False,
               example: Annotated[bool, typer.Option("--example-row", help="print a predict body with one valid "
                                                     "row for the version (default: the latest)")] = False,
               api: ApiOpt = None) -> None:
    """A model and its versions; with --version: that version's lineage, ONNX artifact, parity and exports.

    With --example-row: {"instances": [{column: value, ...}]} for `predict --json @file` or curl: a builtin
    dataset's first row; otherwise 0 for numbers, false for booleans, a category's first level."""
    client = connect(api)
    if example:
        v = client.version(name, version if version is not None else client.model(name)["latest_version"])
        return print_json({"instances": [example_row(v)]})
    if version is None:
        m, vs = client.model(name), client.versions(name)
        if as_json:
            return print_json({"model": m, "versions": vs["items"]})
        grid([("model", m["name"]), ("description", m.get("description") or "-"),
               ("tags", ", ".join(m.get("tags") or []) or "-"), ("aliases", _aliases(m.get("aliases"))),
               ("latest", f"v{m['latest_version']}" if m.get("latest_version") else "-"),
               ("created", when(m.get("created_at")))])
        table = Table(title=f"{len(vs['items'])} versions", title_justify="left", box=None)
        for col in ("version", "aliases", "onnx", "job_id", "final metrics"):
            table.add_column(col, no_wrap=col != "final metrics", overflow="fold")
        for v in vs["items"]:
            final = (v.get("lineage") or {}).get("final_metrics") or {}
            table.add_row(f"v{v['version']}", escape(", ".join(v.get("aliases") or [])) or "-",
                          "yes" if v.get("onnx") else "-", str(v["job_id"]),
                          escape(" ".join(f"{k}={num(x)}" for k, x in sorted(final.items()))) or "-")
        console.print(table)
        return
    v = client.version(name, version)
    if as_json:
        return print_json(v)
    lineage = v.get("lineage") or {}
    rows = [("version", f"{v['model']} v{v['version']}"), ("aliases", ", ".join(v.get("aliases") or []) or "-"),
            ("job_id", str(v["job_id"]))]
    if lineage.get("framework"):
        rows.append(("model", f"{lineage.get('framework')}/{lineage.get('task')}"))
    if lineage.get("final_metrics"):
        rows.append(("metrics", " ".join(f"{k}={num(x)}" for k, x in sorted(lineage["final_metrics"].items()))))
    if inputs := v.get("inputs"):
        rows.append(("inputs", ", ".join(f"{c['name']} ({'|'.join(c['levels']) if c.get('levels') else c['type']})"
                                         for c in inputs)))
    if onnx := v.get("onnx"):
        rows.append(("onnx", f"{onnx.get('uri')} (sha256 {str(onnx.get('sha256'))[:12]}…)"))
    else:
        rows.append(("onnx", "- (no passing export yet: trainyard export)"))
    rows += _parity_rows(v.get("parity"))
    rows.append(("created", when(v.get("created_at"))))
    grid(rows)
    if v.get("exports"):
        table = Table(title="exports", title_justify="left", box=None)
        for col in ("export_id", "status", "max_abs_diff", "error"):
            table.add_column(col, no_wrap=col != "error", overflow="fold")
        for e in v["exports"]:
            table.add_row(str(e["export_id"]), styled(e["status"]),
                          num((e.get("parity") or {}).get("max_abs_diff")), escape(cut(e.get("error") or "", 60)))
        console.print(table)


def example_row(v: dict[str, Any]) -> dict[str, Any]:
    """One row a version accepts, by its raw `inputs` (or its encoded feature names for an older version)."""
    lineage = v.get("lineage") or {}
    columns = v.get("inputs") or [{"name": n, "type": "number"} for n in lineage.get("feature_names") or []]
    uri = str((lineage.get("dataset") or {}).get("uri") or "")
    first = _builtin_first_row(uri.removeprefix("builtin://")) if uri.startswith("builtin://") else {}
    default = {"number": 0.0, "boolean": False}
    return {c["name"]: first.get(c["name"], (c.get("levels") or [None])[0] if c["type"] == "category"
                                  else default.get(c["type"], 0.0)) for c in columns}


def _builtin_first_row(name: str) -> dict[str, float]:
    """The first row of scikit-learn's bundled copy of a builtin dataset, by feature name ({} for an unknown one)."""
    from sklearn import datasets as sk

    load = {"breast_cancer": sk.load_breast_cancer, "wine": sk.load_wine, "diabetes": sk.load_diabetes}.get(name)
    if load is None:
        return {}
    bunch = load()
    return {str(n): float(x) for n, x in zip(bunch.feature_names, bunch.data[0])}


@model_cli.command("alias")
def model_alias(name: str, alias: str, version: int, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Point ALIAS (production, staging ...) at VERSION; moves it if it pointed elsewhere."""
    m = connect(api).set_alias(name, alias, version)
    if as_json:
        return print_json(m)
    line(f"{m['name']}: {alias} → v{(m.get('aliases') or {}).get(alias, version)}")


@cli.command()
def export(name: str, version: int,
           tolerance: Annotated[Optional[float], typer.Option(help="largest allowed |onnx - native| "
                                                                   "(default 1e-4)")] = None,
           watch_it: Annotated[bool, typer.Option("--watch", help="follow it until it ends")] = False,
           as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Export a model version to ONNX, checking parity with the native model; prints the export id.

    With --watch: its status until it ends, then the parity figures (max_abs_diff, rows, metric native vs onnx).

    Exit 0 only when it completes; a failed export prints its error and exits 1."""
    client = connect(api)
    out = client.export(name, version, tolerance)
    if not watch_it:
        return print_json(out) if as_json else line(str(out["export_id"]))
    if not as_json:
        line(f"{out['export_id']} {out['status']}")
    done = _watch_export(client, name, version, str(out["export_id"]), out["status"], quiet=as_json)
    if as_json:
        print_json(done)
    else:
        rows = [("status", done["status"])]
        if done.get("started_at") and done.get("finished_at"):
            rows[0] = ("status", f"{done['status']} {when(done['finished_at'], done['started_at'], 'ran')}")
        rows += _parity_rows(done.get("parity"))
        if art := done.get("artifact"):
            rows.append(("onnx", str(art.get("uri"))))
        grid(rows)
        if done["status"] != "completed":
            line(f"export {done['status']}: {done.get('error') or 'no error given'}", "red")
    raise typer.Exit(0 if done["status"] == "completed" else 1)


def _watch_export(client: TrainyardClient, name: str, version: int, export_id: str, seen: str,
                  patience: float = WATCH_PATIENCE_S, quiet: bool = False) -> dict[str, Any]:
    """Poll the export until it ends, a line per status change; rides out an unreachable API or a 5xx for up to
    `patience` seconds of continuous failure."""
    for e in poll(lambda: client.get_export(name, version, export_id), EXPORT_POLL_S, patience=patience,
                  wait_first=True):
        if e["status"] != seen and not quiet and e["status"] not in FINISHED:
            line(f"{export_id} {e['status']}" + (f" on {e['runner_id']}" if e.get("runner_id") else ""))
        seen = e["status"]
        if seen in FINISHED:
            return e
    raise AssertionError("poll() never ends")  # pragma: no cover
