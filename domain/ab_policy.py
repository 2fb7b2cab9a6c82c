"""The A/B policy's rules: what to do with a deployment's challengers, given the online comparison. No I/O: the
policy engine (commands/ab_policy.py) gathers the figures and records the action.

`decide` is pure: from the policy, the current weights, the challengers halted before and the figures (sufficient
statistics per variant: the whole experiment for the comparison, the current revision for the step gate and the
guardrails) it returns at most one action. The figures go into the action's event, so `GET …/history` explains
every change and re-running `decide` on the recorded figures gives the same action (tests check it).

For each challenger (every variant but the control; halted ones are left at 0):
1. guardrails, on the current revision with at least `GUARD_MIN_REQUESTS` requests: p99 latency over
   `max_p99_latency_ms` or error rate over `max_error_rate` → **halt** (weight 0, never ramped again);
2. significantly worse than the control (always-valid p ≤ `max_p_value`) → **halt**;
3. significantly better by at least `min_lift`, at the last ramp step below 100 → **promote** (100%);
4. below the last ramp step, at least `step_every_s` at the current revision and `min_samples` labelled predictions
   on each side in it (a challenger at 0 steps to the first ramp weight at once) → **step** to the next ramp weight.
When nothing applies, the figures say why in `why_no_action` (one clause per challenger), so an evaluation that
changes nothing can still be shown (commands/ab_policy.py keeps the last one per deployment).
`ramp_steps` says where each challenger stands on the ramp, for the deployment's view.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from domain.ab_stats import VariantStats, compare

GUARD_MIN_REQUESTS = 20


@dataclass(frozen=True)
class Action:
    action: str  # step | promote | halt
    variant: str
    weight: int
    reason: str


def stats_of(row: dict[str, Any] | None, name: str, weight: int) -> VariantStats:
    """A ClickHouse row of projections/telemetry/ab_queries.py as the statistics module's input (zeros when absent)."""
    row = row or {}
    latency = row.get("latency") or [None, None, None]
    ms = [None if v is None or v != v else v / 1000 for v in latency]
    return VariantStats(name=name, weight=weight, requests=int(row.get("requests", 0)),
                        errors=int(row.get("errors", 0)), labelled=int(row.get("labelled", 0)),
                        metric_sum=float(row.get("metric_sum", 0.0)), metric_sum_sq=float(row.get("metric_sum_sq", 0.0)),
                        latency_p50_ms=ms[0], latency_p95_ms=ms[1], latency_p99_ms=ms[2])


def plain_stats(s: VariantStats) -> dict[str, Any]:
    return {"requests": s.requests, "errors": s.errors, "labelled": s.labelled, "metric_sum": s.metric_sum,
            "metric_sum_sq": s.metric_sum_sq, "latency_p99_ms": s.latency_p99_ms}


def decide(policy: dict[str, Any], weights: dict[str, int], control: str, halted: list[str],
           overall: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]],
           seconds_at_revision: float) -> tuple[Action | None, dict[str, Any]]:
    """(the action, the figures it is based on). `overall`/`current`: per variant the sufficient statistics of the
    whole experiment / of the current revision (`plain_stats` form)."""
    metric, ramp = policy["metric"], policy["ramp"]
    alpha, min_samples = policy["max_p_value"], policy["min_samples"]
    steps = [w for w in ramp if w < 100]

    def vs(table: dict[str, dict[str, Any]], name: str) -> VariantStats:
        d = table.get(name) or {}
        return VariantStats(name=name, weight=weights.get(name, 0), requests=d.get("requests", 0),
                            errors=d.get("errors", 0), labelled=d.get("labelled", 0),
                            metric_sum=d.get("metric_sum", 0.0), metric_sum_sq=d.get("metric_sum_sq", 0.0),
                            latency_p50_ms=None, latency_p95_ms=None, latency_p99_ms=d.get("latency_p99_ms"))

    figures: dict[str, Any] = {"metric": metric, "control": control, "weights": dict(weights),
                               "seconds_at_revision": round(seconds_at_revision, 3), "overall": overall,
                               "current": current, "halted": list(halted)}
    waiting: list[str] = []
    for name in weights:
        if name == control:
            continue
        if name in halted:
            waiting.append(f"{name} was halted by the policy and stays at 0%")
            continue
        now = vs(current, name)
        result = compare(vs(overall, control), vs(overall, name), metric, alpha=alpha, min_samples=min_samples)
        figures.update(variant=name, comparison=jsonable(result))
        diff, p = result.get("difference"), result.get("p_value")
        said = (f"{metric} diff {_fmt(diff)} (95% CI {_fmt(_at(result.get('ci'), 0))}..{_fmt(_at(result.get('ci'), 1))}), "
                f"always-valid p {'n/a' if p is None else f'{p:.3g}'}, labelled {vs(overall, control).labelled}/{vs(overall, name).labelled}")
        weight = weights[name]
        if now.requests >= GUARD_MIN_REQUESTS and weight > 0:
            p99, cap = now.latency_p99_ms, policy.get("max_p99_latency_ms")
            if cap is not None and p99 is not None and p99 > cap:
                return Action("halt", name, 0, f"policy: {name} rolled back: p99 latency {p99:.1f} ms > {cap:g} ms"), figures
            rate, cap = now.errors / now.requests, policy.get("max_error_rate")
            if cap is not None and rate > cap:
                return Action("halt", name, 0, f"policy: {name} rolled back: error rate {rate:.3f} > {cap:g}"), figures
        if result.get("decision") == "control_better":
            return Action("halt", name, 0, f"policy: {name} rolled back: significantly worse ({said})"), figures
        at_last_step = not steps or weight >= steps[-1]
        lift = None if diff is None else (diff if result.get("higher_is_better", True) else -diff)
        if (result.get("decision") == "challenger_better" and at_last_step and weight < 100 and lift is not None
                and lift >= policy.get("min_lift", 0.0)):
            return Action("promote", name, 100, f"policy: {name} promoted: significantly better ({said})"), figures
        if weight >= 100:
            waiting.append(f"{name} takes all the traffic: nothing left to do")
            continue
        if weight >= (steps[-1] if steps else 100):
            waiting.append(f"{name} at {weight}%, the last ramp step: waiting for a significant result ({said})")
            continue
        if seconds_at_revision < policy["step_every_s"]:
            waiting.append(f"{name} at {weight}%: next step possible in "
                           f"{policy['step_every_s'] - seconds_at_revision:.0f} s ({said})")
            continue
        next_weight = next(w for w in steps if w > weight)
        control_labelled = vs(current, control).labelled
        ready = weight == 0 or (now.labelled >= min_samples and (
            weights[control] == 0 or control_labelled >= min_samples))
        if ready:
            return Action("step", name, next_weight,
                          f"policy: {name} stepped {weight}% → {next_weight}%: not worse ({said})"), figures
        waiting.append(f"{name} at {weight}%: needs {min_samples} labelled predictions per side at this revision, "
                       f"has {now.labelled} (control {control_labelled})")
    figures["why_no_action"] = "; ".join(waiting) or "no challenger to act on"
    return None, figures


def ramp_steps(policy: dict[str, Any], weights: dict[str, int], control: str,
               halted: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Each challenger's place on the ramp: its weight, the ramp step it has reached (0: none yet) of how many,
    and whether the policy halted it."""
    ramp, stopped = list(policy.get("ramp") or []), set(halted)
    return [{"variant": name, "weight": weight, "step": sum(1 for w in ramp if w <= weight), "of": len(ramp),
             "ramp": ramp, "halted": name in stopped}
            for name, weight in weights.items() if name != control]


def _at(seq: Any, i: int) -> Any:
    return seq[i] if isinstance(seq, (list, tuple)) and len(seq) > i else None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:+.4g}" if isinstance(value, float) else str(value)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
