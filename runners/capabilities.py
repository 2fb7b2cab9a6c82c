"""What this runner has: CPUs, memory, GPUs (count and model), measured on its machine unless settings say.

CPUs are the ones this process may run on (its affinity, which a container's cpuset narrows), memory is
/proc/meminfo's MemTotal, GPUs are torch's CUDA devices, asked only when torch is installed and nothing overrides
the count (importing torch costs seconds and a CUDA context: a runner with TRAINYARD_RUNNER_GPUS set never pays
it). The overrides (TRAINYARD_RUNNER_CPUS / _MEMORY_MB / _GPUS / _GPU_MODEL) are for machines whose limits the
process cannot see, and for keeping a runner off GPU work (`_GPUS=0`).

A job given GPUs gets device indices `0..n-1` of this runner's devices; where the runner itself was started with
CUDA_VISIBLE_DEVICES, those name the physical devices its indices stand for, and a code job's CUDA_VISIBLE_DEVICES
names them too.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from domain.contract import RunnerCapabilities

log = logging.getLogger("trainyard.runner")


def detect(settings: Any, runner_id: str = "", accepts_code: bool = True,
           meminfo: Path = Path("/proc/meminfo")) -> RunnerCapabilities:
    """This machine's capabilities with the settings' `runner_cpus`, `runner_memory_mb`, `runner_gpus` and
    `runner_gpu_model` (each None: measure) over them."""
    gpus, model = settings.runner_gpus, settings.runner_gpu_model
    if gpus is None:
        gpus, found = cuda_devices()
        model = model or found
    return RunnerCapabilities(runner_id=runner_id, cpus=settings.runner_cpus or cpu_count(),
                              memory_mb=settings.runner_memory_mb or memory_mb(meminfo), gpus=gpus,
                              gpu_model=(model or None) if gpus else None, accepts_code=accepts_code)


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal in MB; 1024 where it cannot be read (a platform without /proc)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def cuda_devices() -> tuple[int, str | None]:
    """(count, model of device 0) of the CUDA devices torch sees; (0, None) without torch or CUDA."""
    if importlib.util.find_spec("torch") is None:
        return 0, None
    try:
        import torch

        if not torch.cuda.is_available():
            return 0, None
        return torch.cuda.device_count(), torch.cuda.get_device_name(0)
    except Exception as e:  # a broken driver is a runner without GPUs, not a runner that cannot start
        log.warning("no CUDA devices: %s", e)
        return 0, None


def device_ids(count: int, visible: str | None = None) -> tuple[int, ...]:
    """The physical ids of this runner's first `count` devices, as a child's CUDA_VISIBLE_DEVICES names them:
    `visible` (the runner's own CUDA_VISIBLE_DEVICES, default from its environment) maps index i to its i-th
    entry; unset, or not plain integers: the indices themselves."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    try:
        ids = [int(part) for part in (visible or "").split(",") if part.strip()]
    except ValueError:
        ids = []
    return tuple(ids[i] if i < len(ids) else i for i in range(count))
