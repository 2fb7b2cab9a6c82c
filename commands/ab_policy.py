"""The policy engine: ramps a deployment's challenger up, promotes it or rolls it back, on the online comparison.

Every `interval_s` (part of `trainyard serve`: it reads ClickHouse, which serve owns) each active deployment with a
policy is evaluated by the rules of domain/ab_policy.py. It reads only the read models and the A/B aggregates (the
query objects it is given), and writes only commands on the Deployment aggregate (`policy_action`), each carrying
the revision it evaluated: when two policy processes (or one that restarted) evaluate the same revision, the second
action is refused (StaleEvaluationError), so a ramp is never stepped twice for one evaluation window.

An evaluation that acts is an event (its revision in the history, with the figures); one that does not act would
be an event every `interval_s` per deployment, so instead the last evaluation of each deployment (time, revision,
decision, why, figures) replaces the previous one in the `Evaluations` store (projections/deployments.py
`PolicyEvaluations`, one PostgreSQL row per deployment), which the deployment's view reads.

Every project's deployments are evaluated, each on its own project's figures: its telemetry, A/B aggregates and
evaluation row are keyed by `scoped(project, name)` (the name alone in the default project).
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Callable, Protocol

from commands.context import CommandContext
from commands.deployments import DeploymentCommands
from domain.ab_policy import Action, jsonable, plain_stats, decide, stats_of
from domain.contract import DEFAULT_PROJECT, printable, scoped
from domain.deployment_spec import DeploymentError, control_of
from infra.health import Stage, stopped_within

log = logging.getLogger("trainyard.policy")
POLICY_ACTOR = CommandContext(actor="policy")


class Deployments(Protocol):
    """The deployments read model (projections/deployments.py DeploymentQueries)."""

    def every(self, active: bool | None = None) -> list[dict[str, Any]]: ...

    def history(self, name: str, *, project: str) -> list[dict[str, Any]]: ...


class Evaluations(Protocol):
    """The last evaluation per deployment; `record` replaces the previous one (idempotent, any thread)."""

    def record(self, deployment: str, evaluation: dict[str, Any]) -> None: ...


# (deployment's scoped key, metric, since ms, until ms) -> (rows per variant over the whole window, rows per revision and variant):
# projections/telemetry/ab_queries.py variant_stats bound to the ClickHouse that holds the A/B aggregates.
VariantFigures = Callable[[str, str, int, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


class PolicyEngine:
    def __init__(self, commands: DeploymentCommands, queries: Deployments, stats: VariantFigures, stage: Stage,
                 evaluations: Evaluations, interval_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.commands, self.queries, self.stats, self.stage = commands, queries, stats, stage
        self.evaluations = evaluations
        self.interval_s, self.clock = interval_s, clock
        self.actions = 0

    def evaluate(self, row: dict[str, Any]) -> Action | None:
        """One deployment: decide and act (a command); returns what was done."""
        policy, name, revision = row["policy"], row["name"], row["revision"]
        project = row.get("project") or DEFAULT_PROJECT
        key = scoped(project, name)
        weights = {v["name"]: v["weight"] for v in row["variants"]}
        control = control_of(row["variants"])
        history = self.queries.history(name, project=project)
        halted = [h["figures"]["variant"] for h in history if h["change"] == "policy_halt" and h.get("figures")]
        since = history[-1]["at"] if history else row["updated_at"]
        now_ms = int(self.clock() * 1000) + 1
        overall_rows, by_revision = self.stats(key, policy["metric"], 0, now_ms)  # one pass
        overall = {r["variant"]: plain_stats(stats_of(r, r["variant"], 0)) for r in overall_rows if not r["shadow"]}
        current = {r["variant"]: plain_stats(stats_of(r, r["variant"], 0)) for r in by_revision
                   if not r["shadow"] and r["revision"] == revision}
        seconds = self.clock() - (since.timestamp() if isinstance(since, datetime) else float(since))
        action, figures = decide(policy, weights, control, halted, overall, current, seconds)
        figures["revision"] = revision
        evaluation = {"at": self.clock(), "revision": revision, "decision": "none",
                      "reason": figures.get("why_no_action"), "figures": jsonable(figures)}
        if action is not None:
            evaluation.update(decision=action.action, variant=action.variant, reason=action.reason)
            try:
                self.commands.policy_action(name, action.action, action.variant, action.weight, revision,
                                            action.reason, jsonable(figures), POLICY_ACTOR, project=project)
            except DeploymentError as e:  # another evaluation acted first, or the deployment changed meanwhile
                log.info("policy %s: %s not applied: %s", key, action.action, printable(e, 200))
                evaluation.update(decision="not_applied", reason=f"{action.reason}; not applied: {printable(e, 200)}")
                action = None
        self.evaluations.record(key, evaluation)
        if action is not None:
            self.actions += 1
            log.info("policy %s: %s", key, action.reason)
        return action

    def evaluate_all(self) -> int:
        n = 0
        for row in self.queries.every(active=True):
            if row.get("policy"):
                try:
                    n += self.evaluate(row) is not None
                except Exception as e:  # one deployment's trouble never stops the others
                    log.warning("policy %s: evaluation failed: %s", row["name"], printable(e, 300))
                    self.stage.failed(e)
        return n

    async def run(self, stop: asyncio.Event) -> None:
        log.info("policy process started (every %.1fs)", self.interval_s)
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.evaluate_all)
                self.stage.progressed()
            except Exception as e:
                self.stage.failed(e)
            self.stage.tick()
            await stopped_within(stop, self.interval_s)
