"""Runs a user's training script as a sandboxed child process: `run_code(spec, sink, stop) -> CodeOutcome`.

The script runs with the runner's interpreter (`sys.executable`: NumPy, scikit-learn, PyTorch are there) and finds
`trainyard.sdk` on a PYTHONPATH holding only that package. What the SDK says arrives over a socketpair
(runners/code_channel.py) and becomes calls on the `CodeSink`; its stdout and stderr lines go to
`on_output_line`. `stop` set (a cancel) or `timeout_s` passed: "stop" on the channel and SIGTERM to every process
of the job, then SIGKILL after `grace_s`. When the script exits, whatever it left running is killed too.

Isolation, and what holds where:
- always: a new session and process group; its own working directory (`work_dir/run`: HOME, TMPDIR inside it,
  the SDK's `output_dir`); an environment built from an allowlist (PATH, LANG, HOME, TMPDIR, USER, the SDK's own
  TRAINYARD_CHANNEL_FD and TRAINYARD_RUN_FILE, PYTHON* settings, CUDA_VISIBLE_DEVICES for the GPUs given, thread
  counts = cpus), so no credential, NATS or database URL of the runner's reaches it; stdin closed and no fd
  inherited but the channel (close_fds); rlimits set in the child: RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_FSIZE,
  RLIMIT_NPROC, RLIMIT_CORE=0, and RLIMIT_AS when no GPU is given (CUDA reserves address space far beyond what it
  uses), at twice the memory limit plus 1 GiB: a backstop for one huge allocation;
- a watchdog (every WATCH_S) counts the job's processes through /proc (runners/process_tree.py: its uid, its
  session, the descendants of what it knows, setsid() escapees included) and kills them all when their resident
  memory passes `memory_mb` ("out of memory (limit N MB)") or their tasks pass `max_procs` ("killed: too many
  processes (limit N)");
- runner is root: the job gets its own cgroup (v1 `pids` and `memory`, runners/job_cgroup.py) where the
  controllers are mounted writable: the kernel caps its tasks (a fork bomb stops at the limit however fast it
  forks, then the watchdog kills the group) and its memory (the OOM killer acts inside the group), and lists its
  processes wherever they setsid() to. The script also runs as the runner's own job uid (`job_uid`: one of
  JOB_UIDS per runner process on the machine, no supplementary groups), so it cannot read the runner's files
  (0600/0700, /proc/<runner>/environ included) nor write the code directory, and RLIMIT_NPROC is enforced;
  everything of that uid is killed at the end of a run, which reaches no other runner's job. Where the
  interpreter lies under a directory that uid cannot search (a pyenv under /root), the child gets a mount
  namespace of its own in which a small tmpfs covers that directory and only the interpreter's directories are
  bound back (`_view`): the rest of it is not there to see. The code dir and work dir must be readable (their
  parents searchable) by it; a dataset it cannot read (uploads are kept 0600) is handed over as a copy. Where even that cannot start the interpreter (no mount namespace without
  CAP_SYS_ADMIN), the script runs as root, with a note in the job's log: the cgroup and the watchdog still bound
  it, but it could read what root can;
- runner is not root (or `run_as=None`): the script shares the runner's uid, so it can read what the runner can;
  RLIMIT_NPROC counts all the uid's tasks (set to the uid's count now plus the limit); no cgroup, so the watchdog
  alone measures memory, and a process that setsid()s and is orphaned between two censuses is not found.
Not here: network isolation (a network namespace), cgroup v2, seccomp, a read-only view of the filesystem.
"""
from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from runners.code_channel import ChannelReader, CodeSink
from runners.job_cgroup import JobCgroup
from runners.log_capture import MAX_LOG_MESSAGE, clean
from runners.process_tree import JobProcesses, become_subreaper

__all__ = ["CodeOutcome", "CodeRun", "CodeSink", "Resources", "run_code"]
JOB_UIDS = range(64_000, 65_000)  # code jobs' uids when the runner is root: not in /etc/passwd, used by nothing else
UID_LOCKS = Path("/run/trainyard-job-uids" if os.access("/run", os.W_OK) else "/tmp/trainyard-job-uids")
WATCH_S = 0.1
AS_HEADROOM_MB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class Resources:
    cpus: int = 1
    memory_mb: int = 2048
    gpus: tuple[int, ...] = ()  # device indices: the script's CUDA_VISIBLE_DEVICES (none: no GPU visible)
    max_procs: int = 512  # processes and threads together
    max_open_files: int = 1024
    max_file_mb: int = 16_384  # the largest file the script may write


@dataclass(frozen=True)
class CodeRun:
    """One run of a script. `code_dir`: the unpacked bundle; `entrypoint`: a .py file inside it (relative);
    `work_dir`: a fresh, empty directory of the runner's, where the sandbox makes `run/` (the script's cwd and
    output_dir), `checkpoints/` and `collected/` (the files handed over, runner only); `resume_from`: a checkpoint
    file of an earlier attempt, which the script's `latest_checkpoint()` returns."""

    code_dir: Path
    entrypoint: str
    work_dir: Path
    args: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    dataset_path: Path | None = None
    resume_from: Path | None = None
    resources: Resources = Resources()
    timeout_s: float = 24 * 3600.0
    grace_s: float = 10.0
    run_id: str = "run"
    run_as: int | None = field(default_factory=lambda: job_uid())  # used only when the runner is root


@dataclass
class CodeOutcome:
    status: Literal["completed", "failed", "cancelled"]
    error: str | None = None  # why it failed, for a user to act on
    exit_code: int | None = None  # negative: the signal that ended it
    final_metrics: dict[str, float] = field(default_factory=dict)
    pruned: bool = False  # the sink pruned it (then it was told to stop)
    seconds: float = 0.0


def run_code(spec: CodeRun, sink: CodeSink, stop: threading.Event) -> CodeOutcome:
    """Runs `spec` to its end (returns only once no process of it is left)."""
    started = time.monotonic()
    entry = _entrypoint(spec)
    if isinstance(entry, str):
        return CodeOutcome("failed", error=entry)
    uid = _job_uid(spec, sink)
    res = spec.resources
    cgroup = JobCgroup.create(f"trainyard-{uuid.uuid4().hex[:12]}", res.max_procs + 1,
                              res.memory_mb * MB) if os.geteuid() == 0 else None
    run_dir, checkpoints, collected = _layout(spec, uid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    join = cgroup.join_fds() if cgroup is not None else []
    try:
        channel = ChannelReader(ours, sink, (run_dir, checkpoints), collected)
        become_subreaper()
        proc = subprocess.Popen(
            [sys.executable, "-s", str(entry), *spec.args], cwd=run_dir, env=_environment(spec, run_dir, theirs),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            pass_fds=(theirs.fileno(),), start_new_session=True, preexec_fn=_child_setup(res, uid, join))
    finally:
        theirs.close()
        for fd in join:
            os.close(fd)
    readers = [_OutputReader(proc.stdout, "stdout", sink), _OutputReader(proc.stderr, "stderr", sink)]
    for reader in (channel, *readers):
        reader.start()
    watch = _Watch(proc, JobProcesses(proc.pid, uid, cgroup), spec, channel, sink, stop, started)
    try:
        code = watch.run()
    finally:
        if cgroup is not None:
            cgroup.remove()
    for reader in (channel, *readers):
        reader.join(timeout=2.0)
    ours.close()
    outcome = _outcome(spec, code, watch.reason, watch.cancelled, readers[1].tail)
    outcome.final_metrics, outcome.pruned = channel.final_metrics, channel.pruned
    outcome.seconds = time.monotonic() - started
    return outcome


def _entrypoint(spec: CodeRun) -> Path | str:
    """The script's path, or why it cannot run."""
    rel = PurePosixPath(spec.entrypoint)
    if rel.is_absolute() or ".." in rel.parts or rel.suffix != ".py" or "\x00" in spec.entrypoint:
        return f"entrypoint {spec.entrypoint!r:.200}: must be a relative path to a .py file inside the code"
    path = (spec.code_dir / rel).resolve()
    if not path.is_relative_to(spec.code_dir.resolve()) or not path.is_file():
        return f"entrypoint {spec.entrypoint!r:.200}: no such file in the code"
    return path


def _layout(spec: CodeRun, uid: int | None) -> tuple[Path, Path, Path]:
    run_dir, checkpoints, collected = spec.work_dir / "run", spec.work_dir / "checkpoints", spec.work_dir / "collected"
    for d in (run_dir, run_dir / "tmp", checkpoints):
        d.mkdir(parents=True, exist_ok=True)
    collected.mkdir(mode=0o700, exist_ok=True)
    os.chmod(spec.work_dir, 0o711)  # the script reaches run/ and checkpoints/, lists nothing
    if spec.resume_from is not None:
        name = spec.resume_from.name if spec.resume_from.name.startswith("ckpt-") else "ckpt-000000000000"
        shutil.copyfile(spec.resume_from, checkpoints / name)
    dataset = spec.dataset_path
    if dataset is not None and uid is not None and not (
            _allowed(dataset, uid, 0o4) and all(_allowed(a, uid, 0o1) for a in dataset.resolve().parents)):
        # Uploads are kept 0600: a script of its own uid reads a copy in the job's folder.
        dataset = spec.work_dir / f"dataset{dataset.suffix}"
        shutil.copyfile(spec.dataset_path, dataset)
        os.chmod(dataset, 0o644)
    (spec.work_dir / "run.json").write_text(json.dumps({
        "run_id": spec.run_id, "params": spec.params, "output_dir": str(run_dir), "checkpoint_dir": str(checkpoints),
        "dataset_path": str(dataset) if dataset else None}))
    os.chmod(spec.work_dir / "run.json", 0o644)
    if uid is not None:
        for d in (run_dir, checkpoints):
            for path in (d, *d.rglob("*")):
                os.chown(path, uid, uid, follow_symlinks=False)
    return run_dir, checkpoints, collected


def _environment(spec: CodeRun, run_dir: Path, channel: socket.socket) -> dict[str, str]:
    threads = str(max(1, spec.resources.cpus))
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "HOME": str(run_dir), "TMPDIR": str(run_dir / "tmp"), "USER": "trainyard", "LOGNAME": "trainyard",
           "PYTHONPATH": str(_sdk_dir()), "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "MALLOC_ARENA_MAX": "2",  # glibc's per-thread arenas eat address space
           "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in spec.resources.gpus),
           "TRAINYARD_CHANNEL_FD": str(channel.fileno()), "TRAINYARD_RUN_FILE": str(spec.work_dir / "run.json")}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = threads
    return env


_sdk_lock = threading.Lock()
_sdk_copy: Path | None = None


def _sdk_dir() -> Path:
    """A directory holding only the `trainyard` package, readable by everyone (made once a process)."""
    global _sdk_copy
    with _sdk_lock:
        if _sdk_copy is None or not _sdk_copy.exists():
            found = importlib.util.find_spec("trainyard")
            assert found is not None and found.submodule_search_locations, "the trainyard SDK package is missing"
            root = Path(tempfile.mkdtemp(prefix="trainyard-sdk-"))
            shutil.copytree(list(found.submodule_search_locations)[0], root / "trainyard",
                            ignore=shutil.ignore_patterns("__pycache__"))
            for path in (root, *root.rglob("*")):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            _sdk_copy = root
        return _sdk_copy


_uid_lock = threading.Lock()
_uid_claim: tuple[int, int] | None = None  # (uid, the fd of its lock file, held while this process lives)


def job_uid() -> int | None:
    """This process's uid for its code jobs when it runs as root (None otherwise): one of JOB_UIDS that no other
    process on the machine holds (an exclusive flock on UID_LOCKS/<uid>, released when the process ends), so that
    killing everything of the uid at a job's end reaches that job's processes only, never another runner's."""
    global _uid_claim
    if os.geteuid() != 0:
        return None
    with _uid_lock:
        if _uid_claim is None:
            UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
            for uid in JOB_UIDS:
                fd = os.open(UID_LOCKS / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _uid_claim = (uid, fd)
                break
            else:
                raise RuntimeError(f"every code job uid of {JOB_UIDS} is held by another process")
        return _uid_claim[0]


_usable: dict[int, bool] = {}


def _job_uid(spec: CodeRun, sink: CodeSink) -> int | None:
    """The uid the script runs as: `run_as` when the runner is root and that uid can start the interpreter (in a
    mount namespace of its own where the interpreter's directories are shown if they lie under one only root can
    search, as a pyenv under /root does: `_view`); else None, the runner's."""
    if os.geteuid() != 0 or spec.run_as is None:
        return None
    uid = spec.run_as
    if uid not in _usable:
        try:
            probe = subprocess.run([sys.executable, "-s", "-c", "pass"], cwd="/", env={}, capture_output=True,
                                   check=False, preexec_fn=_become(uid, _view(uid)))
            _usable[uid] = probe.returncode == 0
        except (OSError, subprocess.SubprocessError):  # no mount namespace here (no CAP_SYS_ADMIN), or no setuid
            _usable[uid] = False
    if not _usable[uid]:
        sink.on_note("warning", f"the interpreter {sys.executable} cannot be run by uid {uid}: the script runs as "
                                "the runner's uid")
        return None
    return uid


CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000


def _view(uid: int) -> dict[str, list[str]]:
    """What `uid` must reach of the interpreter (the base install, the virtualenv, the executable's directory) under
    directories it cannot search: per such directory (the topmost), the needed directories below it; empty when it
    can search their parents. The child then gets a mount namespace of its own with a small tmpfs over each such
    directory and the needed ones bound back into it (`_become`), so the interpreter runs and nothing else of those
    directories is there to see."""
    needed = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
              Path(os.path.realpath(sys.executable)).parent}
    covers: dict[str, list[str]] = {}
    for path in sorted(p for p in needed if not any(q != p and p.is_relative_to(q) for q in needed)):
        blocked = next((a for a in reversed(path.parents) if not _allowed(a, uid, 0o1)), None)
        if blocked is not None:
            covers.setdefault(str(blocked), []).append(str(path))
    return covers


def _allowed(path: Path, uid: int, what: int) -> bool:
    """Whether `uid` (its own gid, no other group) has the `what` permission (0o4 read, 0o1 search) on `path` itself."""
    st = path.stat()
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == uid else 0
    return bool(st.st_mode >> shift & what)


def _become(uid: int, covers: dict[str, list[str]]) -> Any:
    """The child's switch to `uid` (no supplementary groups), after showing it `covers` (`_view`; between fork and
    exec)."""
    def apply() -> None:
        if covers:
            _syscall(_LIBC.unshare(CLONE_NEWNS), "unshare")
            _syscall(_LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
            for blocked, needed in covers.items():
                # Held open across the tmpfs mount: a bind's source must be a mount of this namespace.
                held = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) for path in needed]
                _syscall(_LIBC.mount(b"tmpfs", blocked.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                                     b"mode=0755,size=64k"), f"mount tmpfs on {blocked}")
                for path, fd in held:
                    os.makedirs(path, exist_ok=True)
                    _syscall(_LIBC.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC,
                                         None), f"bind {path}")
                    os.close(fd)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return apply


def _syscall(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls into it
PR_SET_PDEATHSIG = 1


def _child_setup(res: Resources, uid: int | None, cgroup_fds: list[int]) -> Any:
    """What the child does between fork and exec: join the job's cgroup, drop to `uid` (showing it `_view`), set
    its rlimits, and die with the runner (SIGKILL when the runner's thread that started it ends: a runner killed
    mid-job leaves no script running; set after the uid change, which clears it). Only plain syscalls in there
    (the runner has threads)."""
    nproc = res.max_procs + 1 if uid is not None else _tasks_of(os.getuid()) + res.max_procs + 1
    limits = [(resource.RLIMIT_NOFILE, res.max_open_files), (resource.RLIMIT_FSIZE, res.max_file_mb * MB),
              (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)]
    if not res.gpus:
        limits.append((resource.RLIMIT_AS, (2 * res.memory_mb + AS_HEADROOM_MB) * MB))

    become = _become(uid, _view(uid)) if uid is not None else None

    def apply() -> None:
        for fd in cgroup_fds:
            os.write(fd, b"0")
        if become is not None:
            become()
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return apply


def _tasks_of(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
                count += len(os.listdir(f"/proc/{name}/task"))
        except OSError:
            pass
    return count


class _Watch:
    """The loop that waits for the script: stop, timeout, memory and process limits; then kills what is left."""

    def __init__(self, proc: subprocess.Popen, tree: JobProcesses, spec: CodeRun, channel: ChannelReader,
                 sink: CodeSink, stop: threading.Event, started: float) -> None:
        self.proc, self.tree, self.spec, self.channel, self.sink, self.stop = proc, tree, spec, channel, sink, stop
        self.deadline = started + spec.timeout_s
        self.reason: str | None = None
        self.cancelled = False
        self.kill_at: float | None = None

    def run(self) -> int:
        res = self.spec.resources
        while True:
            try:
                code = self.proc.wait(WATCH_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.kill_at is None and (self.stop.is_set() or now > self.deadline):
                self.cancelled = self.stop.is_set()
                self.reason = None if self.cancelled else f"timed out after {self.spec.timeout_s:g} s"
                self._terminate("cancelled" if self.cancelled else "timeout")
            elif self.kill_at is not None and now > self.kill_at:
                self.sink.on_note("warning", f"still running {self.spec.grace_s:g} s after SIGTERM: killed")
                self._kill()
            census = self.tree.census()
            cgroup = self.tree.cgroup
            if census.rss_bytes > res.memory_mb * MB or cgroup is not None and cgroup.out_of_memory():
                self._limit(f"out of memory (limit {res.memory_mb} MB)")
            elif census.tasks > res.max_procs:
                self._limit(f"killed: too many processes (limit {res.max_procs})")
        self._kill()  # what the script left behind
        if self.reason is None and self.tree.cgroup is not None and self.tree.cgroup.out_of_memory():
            self.reason = f"out of memory (limit {res.memory_mb} MB)"  # the kernel killed it before a census
        return code

    def _terminate(self, why: str) -> None:
        self.channel.send_stop(why)
        self.tree.signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + self.spec.grace_s

    def _limit(self, reason: str) -> None:
        if self.reason is None or self.cancelled:
            self.reason, self.cancelled = reason, False
        self._kill()

    def _kill(self) -> None:
        if not self.tree.kill():
            self.sink.on_note("error", "some processes of the job could not be killed")


def _outcome(spec: CodeRun, code: int, reason: str | None, cancelled: bool, tail: deque[str]) -> CodeOutcome:
    if reason is not None:
        return CodeOutcome("failed", error=reason, exit_code=code)
    if cancelled:
        return CodeOutcome("cancelled", exit_code=code)
    if code == 0:
        return CodeOutcome("completed", exit_code=0)
    res = spec.resources
    if code < 0:
        sig = signal.Signals(-code)
        known = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: f"file size limit ({res.max_file_mb} MB)"}
        return CodeOutcome("failed", error=known.get(sig, f"killed by signal {sig.name}"), exit_code=code)
    recent = " ".join(tail)
    if any(s in recent for s in ("MemoryError", "Cannot allocate memory", "can't allocate memory", "bad_alloc")):
        return CodeOutcome("failed", error=f"out of memory (limit {res.memory_mb} MB)", exit_code=code)
    if "File too large" in recent:
        return CodeOutcome("failed", error=f"file size limit ({res.max_file_mb} MB)", exit_code=code)
    last = tail[-1] if tail else ""
    return CodeOutcome("failed", error=f"exited with code {code}" + (f": {last}" if last else ""), exit_code=code)


class _OutputReader(threading.Thread):
    """One of the script's output pipes, line by line to the sink (a line cut at the log line bound); keeps the
    last lines for the failure's reason."""

    def __init__(self, pipe: Any, stream: str, sink: CodeSink) -> None:
        super().__init__(name=f"code-{stream}", daemon=True)
        self.pipe, self.stream, self.sink = pipe, stream, sink
        self.tail: deque[str] = deque(maxlen=5)

    def run(self) -> None:
        with self.pipe:
            while line := self.pipe.readline(MAX_LOG_MESSAGE):
                cut = 0
                if not line.endswith(b"\n"):  # longer than the bound: count the rest of it, keep none
                    while (more := self.pipe.readline(MAX_LOG_MESSAGE)) and not more.endswith(b"\n"):
                        cut += len(more)
                    cut += len(more)
                text = line.decode("utf-8", errors="replace").rstrip("\r\n")
                if text.strip():
                    self.tail.append(text.strip()[:500])
                    self.sink.on_output_line(self.stream, clean(text, cut) if cut else text)
