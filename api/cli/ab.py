"""The online comparison: `ab` (the A/B report, live with --watch), `feedback` (ground truth), `policy` (the
automatic ramp, promote and rollback)."""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from api.cli.ab_view import ab_bucket, ab_view
from api.cli.app import ApiOpt, JsonOpt, ReasonOpt, cli, connect, read_json
from api.cli.deployments import deployment_line
from api.cli.output import console, line, print_json
from api.cli.watching import poll
from api.client import Stream, StreamNotServed, TrainyardClient, TrainyardError
from domain.vocabulary import AbMetric

FEEDBACK_BATCH = 10_000  # feedback items per POST (the API's limit)


def _epoch_s(ts: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(ts)).timestamp()
    except ValueError:
        return None


def _nudged(client: TrainyardClient, name: str) -> Callable[[float], object]:
    """A wait between two looks at the A/B report that ends early when the deployment's live stream says something
    changed (a revision, a policy evaluation): the report is not in the stream, so it is re-read then, and every
    interval anyway (labels and requests come in between). Against an API without streams, a plain sleep.

    The stream is opened here, so its first request comes in order with the others; a thread reads the rest
    (reopening it, resumed, after a drop) until its deployment is gone or the command ends."""
    first: Iterator[Stream] | None = client.stream_deployment(name, patience=0)
    last = None
    try:
        _, last, _ = next(first)  # type: ignore[arg-type]  # a deployment's stream starts with its first revision
    except StreamNotServed:
        return time.sleep
    except TrainyardError as e:
        if not e.retryable:
            return time.sleep
        first = None
    wake = threading.Event()

    def read(messages: Iterator[Stream] | None, last: str | None = None) -> None:
        while True:
            try:
                for _, message_id, _ in messages or client.stream_deployment(name, last, patience=None):
                    last = message_id or last
                    wake.set()
                return
            except TrainyardError as e:
                if not e.retryable:
                    return
                messages = None

    threading.Thread(target=read, args=(first, last), name=f"ab-stream-{name}", daemon=True).start()

    def nap(seconds: float) -> None:
        wake.wait(seconds)
        wake.clear()
    return nap


@cli.command()
def ab(name: str,
       metric: Annotated[AbMetric, typer.Option(help="the per-prediction metric compared")] = AbMetric.ACCURACY,
       revision: Annotated[Optional[int], typer.Option(min=1, help="only this revision's traffic")] = None,
       watch_it: Annotated[bool, typer.Option("--watch", help="redraw every --interval seconds until Ctrl-C "
                                                              "(piped: print each look)")]
       = False,
       interval: Annotated[float, typer.Option(min=0.1, help="seconds between redraws with --watch")] = 5.0,
       as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The online A/B comparison of a deployment's variants (and its shadow).

    Per variant: weight, requests, labelled predictions, error rate, latency p50/p95/p99 and the metric with its
    always-valid confidence interval; per challenger against the control: the difference with its interval, the
    always-valid p-value and the decision; the sample-ratio check; the shadow's agreement; a sparkline of each
    challenger's cumulative difference over time.

    With --json: the raw report (with --watch, one line of it per look)."""
    client = connect(api)
    m = metric.value
    if as_json and not watch_it:
        return print_json(client.ab_report(name, m, revision=revision))
    if as_json:
        def retrying(e: TrainyardError, left: float | None) -> None:
            print(f"error: {e}; retrying", file=sys.stderr, flush=True)

        try:
            for report in poll(lambda: client.ab_report(name, m, revision=revision), interval, patience=None,
                               on_error=retrying, sleep=_nudged(client, name)):
                print(json.dumps(report), flush=True)
        except KeyboardInterrupt:
            pass
        return
    started = _epoch_s(client.deployment(name).get("created_at"))

    def look() -> tuple[dict[str, Any], dict[str, Any]]:
        report = client.ab_report(name, m, revision=revision)
        span = time.time() - started if started is not None else 3600.0
        return report, client.ab_timeseries(name, m, bucket=ab_bucket(max(span, 1.0)), revision=revision)

    report, series = look()
    if not watch_it:
        console.print(ab_view(report, series))
        return
    from rich.live import Live

    def footer(error: TrainyardError | None = None) -> Text:
        if error is None:
            return Text(f"updated {datetime.now():%H:%M:%S}; every {interval:g} s, Ctrl-C to stop", style="dim")
        why = "unreachable" if error.status is None else str(error.status)
        return Text(f"API {why} at {datetime.now():%H:%M:%S}: {error.detail or error.title}; showing the last "
                    f"look, retrying every {interval:g} s", style="yellow")

    nap = _nudged(client, name)
    try:
        if not console.is_terminal:  # piped: each look printed whole as it comes (Live would print only the last)
            console.print(ab_view(report, series, footer()))
            for report, series in poll(look, interval, patience=None, wait_first=True, sleep=nap,
                                       on_error=lambda e, left: console.print(footer(e))):
                console.print(ab_view(report, series, footer()))
            return
        with Live(ab_view(report, series, footer()), console=console, refresh_per_second=4) as live:
            def stale(e: TrainyardError, left: float | None) -> None:  # the last look stays, with why it is old
                live.update(ab_view(report, series, footer(e)))

            for report, series in poll(look, interval, patience=None, wait_first=True, on_error=stale, sleep=nap):
                live.update(ab_view(report, series, footer()))
    except KeyboardInterrupt:
        pass


@cli.command()
def feedback(name: str,
             file: Annotated[str, typer.Argument(help='a JSON list of {"request_id", "label" | "value"}, '
                                                      "or - for standard input")],
             as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Ground truth for earlier predictions: the true `label` (classification) or `value` (regression) per
    `request_id` (the id a prediction answered with). Prints how many were received, and how many name a prediction
    the deployment is known to have made (unknown ones are kept and count once their prediction lands)."""
    items = read_json(file)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        label = "standard input" if file == "-" else file
        raise TrainyardError(None, {"title": "Invalid input", "detail": f'{label}: not a JSON list of '
                                                                        '{"request_id", "label" | "value"} objects'})
    client = connect(api)
    total: dict[str, Any] = {"received": 0, "known": 0, "unknown": 0, "unknown_request_ids": []}
    for start in range(0, max(len(items), 1), FEEDBACK_BATCH):
        try:
            out = client.feedback(name, items[start:start + FEEDBACK_BATCH])
        except TrainyardError as e:
            if start == 0:
                raise
            raise TrainyardError(e.status, e.problem, f"{e} (the first {start} items were sent)") from None
        for key in ("received", "known", "unknown"):
            total[key] += int(out.get(key) or 0)
        total["unknown_request_ids"] += list(out.get("unknown_request_ids") or [])
    total["unknown_request_ids"] = total["unknown_request_ids"][:100]
    if as_json:
        return print_json(total)
    line(f"{name}: received {total['received']}, known {total['known']}, unknown {total['unknown']}")
    if total["unknown"]:
        shown = ", ".join(total["unknown_request_ids"][:10])
        more = f" and {total['unknown'] - min(10, len(total['unknown_request_ids']))} more" \
            if total["unknown"] > 10 else ""
        line(f"unknown request ids (no prediction of {name} with them seen yet; they count once it lands): "
              f"{shown}{more}", "yellow")


def _policy_text(p: dict[str, Any] | None) -> str:
    """'accuracy; ramp 10%→25%→50%→100% every 300 s; min 500 labelled; p ≤ 0.05; p99 ≤ 50 ms' or 'none'."""
    if not p:
        return "none"
    parts = [str(p.get("metric", "accuracy"))]
    if p.get("ramp"):
        parts.append("ramp " + "→".join(f"{w}%" for w in p["ramp"])
                     + (f" every {p['step_every_s']} s" if p.get("step_every_s") is not None else ""))
    if p.get("min_samples") is not None:
        parts.append(f"min {p['min_samples']} labelled")
    if p.get("max_p_value") is not None:
        parts.append(f"p ≤ {p['max_p_value']:g}")
    if p.get("min_lift"):
        parts.append(f"lift ≥ {p['min_lift']:g}")
    if p.get("max_p99_latency_ms") is not None:
        parts.append(f"p99 ≤ {p['max_p99_latency_ms']:g} ms")
    if p.get("max_error_rate") is not None:
        parts.append(f"errors ≤ {100 * p['max_error_rate']:g}%")
    return "; ".join(parts)


@cli.command()
def policy(name: str,
           file: Annotated[Optional[str], typer.Argument(help="a JSON policy (metric, min_samples, min_lift, "
                                                              "max_p_value, max_p99_latency_ms, max_error_rate, "
                                                              "ramp, step_every_s), or - for standard input")]
           = None,
           clear: Annotated[bool, typer.Option("--clear", help="remove the deployment's policy")] = False,
           reason: ReasonOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Attach or change the deployment's automatic policy (ramp the challenger up, promote it or roll it back on
    the online comparison), or remove it with --clear."""
    if clear == (file is not None):
        raise typer.BadParameter("give a policy file (or - for standard input) or --clear, one of them",
                                 param_hint="'FILE' / '--clear'")
    doc: Any = None
    if file is not None:
        doc = read_json(file)
        if isinstance(doc, dict) and "policy" in doc and set(doc) <= {"policy", "reason"}:  # the PUT body itself
            reason = reason if reason is not None else doc.get("reason")
            doc = doc["policy"]
        if doc is not None and not isinstance(doc, dict):
            label = "standard input" if file == "-" else file
            raise TrainyardError(None, {"title": "Invalid input", "detail": f"{label}: not a JSON object (a policy)"})
    d = connect(api).set_policy(name, doc, reason)
    if as_json:
        return print_json(d)
    deployment_line(d)
    line(f"policy: {_policy_text(d.get('policy'))}")
