"""`trainyard eval JOB`: a completed job's evaluation report as tables (GET /api/v1/training/jobs/{id}/evaluation)."""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from api.cli import ids
from api.cli.app import ApiOpt, cli, connect
from api.cli.ids import JobIdArg
from api.cli.output import console

MAX_MATRIX_CLASSES = 20  # a bigger confusion matrix does not fit a terminal: --json has it whole
TOP_FEATURES = 10


@cli.command(name="eval")
def evaluate(job_id: JobIdArg, as_json: Annotated[bool, typer.Option("--json", help="print the raw report")] = False,
             api: ApiOpt = None) -> None:
    """A completed job's evaluation: per split its metrics, confusion matrix and per-class figures or residuals,
    curve summaries, the worst rows; k-fold's folds; the most important features."""
    client = connect(api)
    report = client.evaluation(ids.job_id(client, job_id))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    validation = report.get("validation") or {"strategy": "holdout", "valid_fraction": 0.2}
    console.print(f"[bold]{escape(report['name'])}[/bold] {report['task']}, validation "
                  f"{escape(json.dumps(validation))}, best step {report.get('best_step')}", highlight=False)
    for name, section in report["splits"].items():
        console.print(f"\n[bold]{name}[/bold] ({section['rows']:,} rows)")
        _metrics(section["metrics"])
        if "confusion_matrix" in section:
            _classification(section)
        else:
            _regression(section)
        worst = ", ".join(str(r["row"]) for r in section.get("worst_rows", []))
        console.print(f"worst rows: {worst or '-'}", highlight=False)
    if baseline := report.get("baseline"):
        console.print(f"\n[bold]against seasonal naive[/bold] (season {baseline['season']}, horizon "
                      f"{baseline['horizon']}, {baseline['series']} series; skill = 1 - MAE / its MAE)",
                      highlight=False)
        for name, figures in baseline["metrics"].items():
            console.print(f"{name}: its mae {_number(figures['mae'])}, skill {_number(baseline['skill'].get(name))}",
                          highlight=False)
    if folds := report.get("folds"):
        table = Table(title="folds", title_justify="left", box=None)
        names = sorted(folds["mean"])
        table.add_column("fold", no_wrap=True)
        for n in names:
            table.add_column(n, justify="right", no_wrap=True)
        for i, fold in enumerate(folds["per_fold"], 1):
            table.add_row(str(i), *(_number(fold.get(n)) for n in names))
        table.add_row("mean ± sd", *(f"{_number(folds['mean'][n])} ± {_number(folds['sd'].get(n))}" for n in names))
        console.print(table)
    if importance := report.get("feature_importance"):
        table = Table(title=f"feature importance ({report.get('feature_importance_kind')})", title_justify="left",
                      box=None)
        table.add_column("feature", no_wrap=True)
        table.add_column("importance", justify="right", no_wrap=True)
        for entry in importance[:TOP_FEATURES]:
            table.add_row(escape(entry["feature"]), _number(entry["importance"]))
        console.print(table)


def _metrics(metrics: dict[str, Any]) -> None:
    console.print("  ".join(f"{k} {_number(v)}" for k, v in metrics.items()), highlight=False)


def _classification(section: dict[str, Any]) -> None:
    matrix, labels = section["confusion_matrix"]["matrix"], section["confusion_matrix"]["labels"]
    if len(labels) <= MAX_MATRIX_CLASSES:
        table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left", box=None)
        table.add_column("", no_wrap=True)
        for label in labels:
            table.add_column(escape(label), justify="right", no_wrap=True)
        for label, row in zip(labels, matrix):
            table.add_row(escape(label), *map(str, row))
        console.print(table)
    table = Table(title="per class", title_justify="left", box=None)
    for col in ("class", "precision", "recall", "f1", "support", "roc auc", "avg precision"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    roc = {c["label"]: c for c in section.get("roc", [])}
    pr = {c["label"]: c for c in section.get("pr", [])}
    for c in section["per_class"]:
        table.add_row(escape(c["label"]), _number(c["precision"]), _number(c["recall"]), _number(c["f1"]),
                      str(c["support"]), _number(roc.get(c["label"], {}).get("auc")),
                      _number(pr.get(c["label"], {}).get("average_precision")))
    console.print(table)
    calibration = section.get("calibration") or {}
    console.print(f"log loss {_number(section.get('log_loss'))}, expected calibration error "
                  f"{_number(calibration.get('expected_calibration_error'))}", highlight=False)


def _regression(section: dict[str, Any]) -> None:
    quantiles = section.get("residual_quantiles") or {}
    console.print("residuals (prediction - actual): " + ", ".join(f"q{k} {_number(v)}" for k, v in quantiles.items()),
                  highlight=False)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
