"""What a job needs and what a runner has: `cpus`, `memory_mb` and `gpus`, the same three names on both sides.

A job's `resources` (a code job's, or a PyTorch job's that asks for a GPU) are compared with a runner's
capacity (runners/capabilities.py measures it, `RunnerCapabilities` carries it) in two places: the claim (a
runner too small for a job is refused before anything is recorded, commands/reports.py) and the submit (a job no
runner seen lately could hold is a 422 naming the field, api/jobs.py). Work needing a GPU is also routed apart
(domain/registry.py `needs_gpu`), so CPU-only runners never fetch it. No I/O.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESOURCE_FIELDS = ("gpus", "memory_mb", "cpus")  # the order a shortfall is named in: the rarest first


def gpus_of(resources: Mapping[str, Any] | None) -> int:
    """The GPUs `resources` ask for (0 when it names none)."""
    return int((resources or {}).get("gpus") or 0)


def shortfall(needs: Mapping[str, Any] | None, has: Mapping[str, Any]) -> str | None:
    """The first of RESOURCE_FIELDS that `needs` asks more of than `has` holds; None when it fits. A field
    `needs` leaves out asks nothing (a built-in job without resources fits any runner)."""
    for name in RESOURCE_FIELDS:
        if int((needs or {}).get(name) or 0) > int(has.get(name) or 0):
            return name
    return None


def describe(resources: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {int(resources.get(name) or 0)}" for name in RESOURCE_FIELDS)


def waiting_for(status: str, resources: Mapping[str, Any] | None) -> str | None:
    """What a queued job waits for beyond its turn, as its view shows it: "gpu" while a job that needs a GPU is
    queued (only GPU runners take it); None otherwise."""
    if status == "queued" and gpus_of(resources) > 0:
        return "gpu"
    return None
