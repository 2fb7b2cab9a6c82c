"""Every process of one code job, found through /proc, counted and killed, escapees included.

A job's processes are the members of its cgroup when it has one (runners/job_cgroup.py), those of its uid (when
the runner is root and the job runs as a uid of its own), those of the child's session, and the descendants of
any process already known (a setsid()ed child is found through its parent). The runner is made a child
subreaper (PR_SET_CHILD_SUBREAPER), so a process orphaned by its parent is reparented to the runner rather than
to init: it stays findable, and `kill` reaps it.

Killing is SIGKILL to the process group, to every process found, and, when the job has a uid of its own, from a
helper running as that uid, `kill -9 -1`: every process of the uid at once, which also beats a fork bomb and a
process that hid from /proc's owner by making itself non-dumpable. It repeats until a census finds nothing.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from runners.job_cgroup import JobCgroup

PR_SET_CHILD_SUBREAPER = 36
_PAGE = os.sysconf("SC_PAGE_SIZE")


def become_subreaper() -> bool:
    """Orphans of this process's descendants are reparented to it (Linux); False where that is unavailable."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Census:
    processes: int = 0
    tasks: int = 0  # processes and their threads: what RLIMIT_NPROC counts
    rss_bytes: int = 0  # summed over the processes (pages shared after a fork count once each)


class JobProcesses:
    """The processes of the job whose first process is `root_pid` (a session leader); `uid`: the job's own uid,
    or None when it shares the runner's; `cgroup`: the job's cgroup, if it has one (its members are the job's)."""

    def __init__(self, root_pid: int, uid: int | None, cgroup: JobCgroup | None = None) -> None:
        self.root_pid, self.uid, self.cgroup = root_pid, uid, cgroup
        self.known: set[int] = {root_pid}
        self.zombies: set[int] = set()
        self._kill = shutil.which("kill")

    def census(self) -> Census:
        found = Census()
        alive: set[int] = set()
        self.zombies: set[int] = set()
        if self.cgroup is not None:
            self.known |= self.cgroup.pids()
        for pid, ppid, session, threads, rss, uid, zombie in _processes():
            if pid in self.known or ppid in alive or ppid in self.known or session == self.root_pid \
                    or (self.uid is not None and uid == self.uid):
                alive.add(pid)
                if zombie:  # dead, waiting for its parent to reap it: it holds nothing but its pid
                    self.zombies.add(pid)
                    continue
                found.processes += 1
                found.tasks += threads
                found.rss_bytes += rss * _PAGE
        self.known = alive | {self.root_pid}
        if self.cgroup is not None:
            found.tasks = max(found.tasks, self.cgroup.tasks())
        return found

    def signal(self, signum: int) -> None:
        """`signum` to the job's process group and every process found."""
        self.census()
        for target in (-self.root_pid, *self.known):
            try:
                os.kill(target, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self, deadline_s: float = 10.0) -> bool:
        """SIGKILL to every process of the job until none is left (True) or `deadline_s` passed (False); reaps
        the ones reparented to the runner."""
        deadline = time.monotonic() + deadline_s
        while True:
            if self.uid is not None and self._kill:
                subprocess.run([self._kill, "-9", "-1"], user=self.uid, group=self.uid, extra_groups=[],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               close_fds=True, check=False)
            if self.cgroup is not None:
                self.cgroup.kill()
            self.signal(signal.SIGKILL)
            left = self.census().processes
            self._reap()
            if left == 0 or time.monotonic() > deadline:
                return left == 0
            time.sleep(0.01)

    def _reap(self) -> None:
        for pid in self.zombies - {self.root_pid}:  # the root is the caller's to wait for
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours: its own parent reaps it
                pass


def _processes() -> list[tuple[int, int, int, int, int, int, bool]]:
    """(pid, ppid, session, threads, rss pages, uid, zombie) of every process, in pid order."""
    out = []
    for name in sorted((n for n in os.listdir("/proc") if n.isdigit()), key=int):
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                data = os.read(fd, 2048)
                uid = os.fstat(fd).st_uid
            finally:
                os.close(fd)
        except OSError:  # gone meanwhile
            continue
        fields = data[data.rfind(b")") + 2:].split()
        out.append((int(name), int(fields[1]), int(fields[3]), int(fields[17]), int(fields[21]), uid,
                    fields[0] == b"Z"))
    return out
