"""A code job's own cgroup (v1 `pids` and `memory` controllers), where the runner may make one: the kernel then
caps the job's tasks and memory whatever uid it runs as, and lists its processes wherever they setsid() to.

Made under the runner's own group of each controller (read from /proc/self/cgroup), so a runner confined by its
container stays confined. The child joins it between fork and exec (`join_fds` opened before the fork, written
"0": the calling process). Where no controller is mounted writable (an unprivileged runner, cgroup v2 without
delegation), `create` returns None and the watchdog's /proc census alone applies.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

_V1 = Path("/sys/fs/cgroup")


def _own_group(controller: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


class JobCgroup:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, max_tasks: int, memory_bytes: int | None) -> JobCgroup | None:
        dirs: dict[str, Path] = {}
        wanted = {"pids": ("pids.max", max_tasks)}
        if memory_bytes is not None:
            wanted["memory"] = ("memory.limit_in_bytes", memory_bytes)
        for controller, (knob, value) in wanted.items():
            parent = _own_group(controller)
            if parent is None:
                continue
            path = _V1 / controller / parent.lstrip("/") / name
            try:
                path.mkdir()
                (path / knob).write_text(str(value))
                if controller == "memory":
                    with contextlib.suppress(OSError):  # no swap accounting: nothing to cap there
                        (path / "memory.memsw.limit_in_bytes").write_text(str(value))
                dirs[controller] = path
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
        if "pids" not in dirs:  # the memory cap alone is not worth a group the watchdog must also read
            cls(dirs).remove()
            return None
        return cls(dirs)

    def join_fds(self) -> list[int]:
        """Fds of each group's cgroup.procs, for the child to write "0" to (its caller closes them after the fork)."""
        return [os.open(d / "cgroup.procs", os.O_WRONLY) for d in self.dirs.values()]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def tasks(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dirs["pids"] / "pids.current").read_text())
        return 0

    def out_of_memory(self) -> bool:
        """True once the kernel's OOM killer killed a process of the group (or its limit was hit unreclaimably)."""
        if "memory" not in self.dirs:
            return False
        with contextlib.suppress(OSError, ValueError):
            for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
                key, value = line.split()
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, deadline_s: float = 5.0) -> None:
        """Removes the groups once empty (killing what is left)."""
        deadline = time.monotonic() + deadline_s
        for d in self.dirs.values():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    self.kill()
                    time.sleep(0.01)
