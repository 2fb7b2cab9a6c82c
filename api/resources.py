"""Whether a job's `resources` can be met by the runners there are (issue 19 item 8).

A job needing more GPUs, memory or CPUs than any runner heard from within `runner_seen_window_s`
(infra/runner_registry.py) is a 422 naming the field (`resources.gpus`), once this API process has heard hellos
for that long: a service just started, or a fleet with no runner up at all, does not know what may come, so the
job is queued and its view says what it waits for (`waiting_for`). A job that fits some runner is queued as usual:
a busy GPU runner is no reason to refuse.
"""
from __future__ import annotations

from typing import Any

from api.deps import Services
from api.problems import Problem
from domain.resources import RESOURCE_FIELDS, shortfall


def check_runners_fit(resources: dict[str, Any] | None, s: Services) -> None:
    """Problem(422) naming `resources.<field>` when no runner seen lately could ever run a job needing this."""
    registry = getattr(s, "runners", None)
    if not resources or registry is None:
        return
    window = s.settings.runner_seen_window_s
    if registry.listened_for() < window:
        return
    seen = registry.seen(window)
    if not seen or any(shortfall(resources, runner) is None for runner in seen):
        return
    most = {name: max(int(r[name]) for r in seen) for name in RESOURCE_FIELDS}
    field = next((name for name in RESOURCE_FIELDS if int(resources.get(name) or 0) > most[name]),
                 shortfall(resources, seen[0]))
    raise Problem(422, "Invalid request",
                  f"resources.{field}: no runner seen in the last {window:g} s can run this job: it needs {field} "
                  f"{resources.get(field)}; the runners seen have at most {most[field]} {field} "
                  f"({len(seen)} runner{'s' if len(seen) != 1 else ''}); start a runner that has it "
                  f"(TRAINYARD_RUNNER_{field.upper()} overrides what a runner reports)", f"resources.{field}")

