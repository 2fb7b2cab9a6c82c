"""Code jobs' two ends without a stack: `run_code` runs a script through the SDK with a recording sink, and the
SDK runs offline as `python train.py`. The hostile scripts (fork bombs, a memory hog, a 10 GB writer, one that
ignores SIGTERM) each end with their clear error, and no process of theirs is left (counted through /proc)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runners.code_sandbox import CodeOutcome, CodeRun, CodeSink, Resources, run_code
from runners.process_tree import _processes

REPO = Path(__file__).resolve().parent.parent
PIDS = "import os; print('PID', os.getpid(), os.getsid(0), flush=True)\n"


class Recorder(CodeSink):
    def __init__(self, prune_at: int | None = None) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.lines: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.files: list[tuple[str, Path]] = []
        self.finished: dict[str, float] | None = None
        self.prune_at = prune_at

    def on_metrics(self, step: int, metrics: dict[str, float], ts_ms: int) -> None:
        self.metrics.append((step, metrics))

    def on_output_line(self, stream: str, text: str) -> None:
        self.lines.append((stream, text))

    def on_note(self, level: str, text: str) -> None:
        self.notes.append(text)

    def on_artifact(self, name: str, path: Path) -> None:
        self.files.append((name, path))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.files.append((f"checkpoint {step}", path))

    def on_finish(self, metrics: dict[str, float]) -> None:
        self.finished = metrics

    def on_report(self, value: float, step: int) -> bool:
        return self.prune_at is not None and step >= self.prune_at

    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)

    def sessions(self) -> set[int]:
        """The session ids the scripts printed (PIDS)."""
        return {int(t.split()[2]) for _, t in self.lines if t.startswith("PID ")}


@pytest.fixture
def area() -> Any:
    """A code dir and fresh work dirs under /tmp, reachable by a job's own uid (pytest's tmp_path is not)."""
    root = Path(tempfile.mkdtemp(prefix="trainyard-sandbox-test-"))
    os.chmod(root, 0o755)
    (root / "code").mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run(area: Path, script: str, sink: CodeSink | None = None, stop: threading.Event | None = None,
        **spec: Any) -> tuple[CodeOutcome, Recorder]:
    sink = sink or Recorder()
    head = PIDS if script.startswith(PIDS) else ""
    (area / "code" / "train.py").write_text(head + textwrap.dedent(script[len(head):]))
    os.chmod(area / "code" / "train.py", 0o644)
    work = Path(tempfile.mkdtemp(dir=area))
    outcome = run_code(CodeRun(code_dir=area / "code", entrypoint="train.py", work_dir=work, **spec), sink,
                       stop or threading.Event())
    return outcome, sink  # type: ignore[return-value]


def left_in(sessions: set[int]) -> list[int]:
    return [pid for pid, _, session, *_, zombie in _processes() if session in sessions and not zombie]


def test_a_script_logs_100_steps_and_finishes(area: Path) -> None:
    outcome, sink = run(area, """
        import trainyard.sdk as ty
        with ty.init(params={"epochs": 1}) as run:
            print("params", run.params["lr"], run.params["epochs"])
            for step in range(100):
                run.log({"loss": 1 / (step + 1), "acc": step / 100}, step=step)
            (run.output_dir / "notes.txt").write_text("hello")
            run.log_artifact(run.output_dir / "notes.txt", "notes")
            run.finish(metrics={"auc": 0.93})
    """, params={"lr": 0.1})
    assert outcome.status == "completed", (outcome, sink.lines)
    assert [s for s, _ in sink.metrics] == list(range(100))
    assert sink.metrics[99] == (99, {"loss": 0.01, "acc": 0.99})
    assert outcome.final_metrics == sink.finished == {"auc": 0.93}
    assert ("stdout", "params 0.1 1") in sink.lines
    assert [(n, p.read_text()) for n, p in sink.files] == [("notes", "hello")]


def test_a_script_that_raises_fails_with_its_traceback(area: Path) -> None:
    outcome, sink = run(area, "def train():\n    raise ValueError('bad learning rate')\ntrain()\n")
    assert outcome.status == "failed"
    assert outcome.error == "exited with code 1: ValueError: bad learning rate"
    assert ("stderr", "Traceback (most recent call last):") in sink.lines
    assert any(s == "stderr" and "in train" in t for s, t in sink.lines)


def test_an_entrypoint_outside_the_code_is_refused(area: Path) -> None:
    outcome = run_code(CodeRun(code_dir=area / "code", entrypoint="../etc/x.py", work_dir=area / "w"), Recorder(),
                       threading.Event())
    assert outcome.status == "failed" and "relative path to a .py file" in (outcome.error or "")


def test_a_script_ignoring_sigterm_is_killed_after_the_grace(area: Path) -> None:
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t = time.monotonic()
    outcome, sink = run(area, PIDS + """
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["sleep", "300"])   # a child of the group, which must not survive either
        print("ready", flush=True)
        time.sleep(300)
    """, stop=stop, grace_s=1.0)
    assert outcome.status == "cancelled"
    assert 2.0 <= time.monotonic() - t < 6.0
    assert any("after SIGTERM: killed" in n for n in sink.notes)
    assert sink.sessions() and left_in(sink.sessions()) == []


def test_a_timeout_fails_the_run(area: Path) -> None:
    outcome, _ = run(area, "import time\ntime.sleep(60)\n", timeout_s=1.0, grace_s=0.5)
    assert (outcome.status, outcome.error) == ("failed", "timed out after 1 s")


def test_should_stop_is_seen_after_a_cancel_and_a_checkpoint_is_kept(area: Path) -> None:
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    outcome, sink = run(area, """
        import time
        import trainyard.sdk as ty
        run = ty.init()
        step = 0
        while not run.should_stop():
            run.log({"loss": 1.0}, step=step)
            step += 1
            time.sleep(0.01)
        run.save_checkpoint({"step": step})
        print("stopped because", run.stop_reason)
    """, stop=stop, grace_s=10.0)
    assert outcome.status == "cancelled"
    assert ("stdout", "stopped because cancelled") in sink.lines
    assert [n for n, _ in sink.files][0].startswith("checkpoint ")


def test_a_pruned_trial_is_told_to_stop(area: Path) -> None:
    outcome, sink = run(area, """
        import time
        import trainyard.sdk as ty
        run = ty.init()
        for step in range(1000):
            run.report(0.5, step)
            if run.should_stop():
                print("pruned at", step)
                break
            time.sleep(0.01)
    """, sink=Recorder(prune_at=3))
    assert outcome.status == "completed" and outcome.pruned
    assert any(t.startswith("pruned at ") and int(t.split()[-1]) < 100 for _, t in sink.lines)


def test_a_resumed_run_finds_the_checkpoint(area: Path) -> None:
    (area / "ckpt-000000000041.bin").write_bytes(b"weights")
    outcome, sink = run(area, """
        import trainyard.sdk as ty
        path = ty.init().latest_checkpoint()
        print(path.name, path.read_bytes().decode())
    """, resume_from=area / "ckpt-000000000041.bin")
    assert outcome.status == "completed"
    assert ("stdout", "ckpt-000000000041.bin weights") in sink.lines


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "import subprocess\nsubprocess.run(['bash', '-c', ':(){ :|:& };:'])\nimport time\ntime.sleep(60)\n",
], ids=["python", "bash"])
def test_a_fork_bomb_is_stopped(area: Path, bomb: str) -> None:
    outcome, sink = run(area, PIDS + bomb, resources=Resources(max_procs=40), timeout_s=30)
    assert (outcome.status, outcome.error) == ("failed", "killed: too many processes (limit 40)"), sink.lines[-5:]
    assert left_in(sink.sessions()) == []


def test_a_memory_hog_fails_out_of_memory(area: Path) -> None:
    outcome, sink = run(area, PIDS + """
        import time
        hog = []
        while True:
            hog.append(bytearray(20 * 1024 * 1024))
            time.sleep(0.01)
    """, resources=Resources(memory_mb=300), timeout_s=30)
    assert (outcome.status, outcome.error) == ("failed", "out of memory (limit 300 MB)"), sink.lines[-5:]
    assert left_in(sink.sessions()) == []


def test_one_huge_allocation_fails_out_of_memory(area: Path) -> None:
    outcome, _ = run(area, "x = bytearray(50 * 1024**3)\n", resources=Resources(memory_mb=300))
    assert (outcome.status, outcome.error) == ("failed", "out of memory (limit 300 MB)")


def test_writing_10_gb_stops_at_the_file_size_limit(area: Path) -> None:
    outcome, sink = run(area, PIDS + """
        block = b"x" * (1 << 20)
        with open("big.bin", "wb") as f:
            for _ in range(10 * 1024):
                f.write(block)
    """, resources=Resources(max_file_mb=20), timeout_s=30)
    assert (outcome.status, outcome.error) == ("failed", "file size limit (20 MB)")
    written = list(area.glob("*/run/big.bin"))
    assert written and written[0].stat().st_size <= 20 * 1024 * 1024
    assert left_in(sink.sessions()) == []


def test_a_process_that_escapes_with_setsid_is_killed(area: Path) -> None:
    outcome, sink = run(area, """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                print("ESCAPED", os.getpid(), flush=True)
                time.sleep(300)
            os._exit(0)
        time.sleep(1)
    """)
    assert outcome.status == "completed"
    escaped = [int(t.split()[1]) for _, t in sink.lines if t.startswith("ESCAPED")]
    assert escaped and all(pid not in {p for p, *_ in _processes()} for pid in escaped)


def test_the_script_sees_no_secret_and_no_fd_of_the_runner(area: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", "postgresql://trainyard:hunter2@db/trainyard")
    monkeypatch.setenv("TRAINYARD_NATS_URL", "nats://runner:hunter2@nats:4222")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    held = socket.socket()
    held.set_inheritable(True)
    try:
        outcome, sink = run(area, """
            import json, os
            print("ENV", json.dumps(dict(os.environ)))
            print("FDS", json.dumps(sorted(int(fd) for fd in os.listdir("/proc/self/fd"))))
            try:
                with open(f"/proc/{os.getppid()}/environ", "rb") as f:  # the runner's
                    print("RUNNER", f.read().decode(errors="replace").replace("\\0", " "))
            except OSError as e:
                print("RUNNER unreadable:", type(e).__name__)
        """)
    finally:
        held.close()
    assert outcome.status == "completed"
    env = json.loads(next(t for _, t in sink.lines if t.startswith("ENV "))[4:])
    assert "hunter2" not in json.dumps(env)
    if os.geteuid() == 0:  # the script has a uid of its own (else it shares the runner's, and may read it)
        assert ("stdout", "RUNNER unreadable: PermissionError") in sink.lines
    assert {k for k in env if k.startswith("TRAINYARD_")} == {"TRAINYARD_CHANNEL_FD", "TRAINYARD_RUN_FILE"}
    fds = json.loads(next(t for _, t in sink.lines if t.startswith("FDS "))[4:])
    assert len(fds) == 5 and {0, 1, 2, int(env["TRAINYARD_CHANNEL_FD"])} < set(fds)  # and listdir's own


def test_hostile_messages_are_dropped_and_a_symlink_is_not_followed(area: Path) -> None:
    outcome, sink = run(area, """
        import os
        import trainyard.sdk as ty
        run = ty.init()
        os.symlink("/etc/passwd", run.output_dir / "passwd")
        run._transport.send({"t": "artifact", "name": "p", "path": str(run.output_dir / "passwd")})
        run._transport.send({"t": "metrics", "points": [[1, 1, {"loss": "NaN"}]]})
        run._transport.sock.sendall(b"not json\\n" + b"{" * 100 + b"\\n")
        run.log({"ok": 1.0}, step=2)
    """)
    assert outcome.status == "completed"
    assert sink.files == [] and sink.metrics == [(2, {"ok": 1.0})]
    assert {n.split("'")[1] for n in sink.notes if "dropped" in n} >= {"artifact", "metrics", "unparsed"}


def test_the_sdk_runs_offline_with_python_train_py(area: Path) -> None:
    script = area / "code" / "train.py"
    script.write_text(textwrap.dedent("""
        import trainyard.sdk as ty
        with ty.init(params={"lr": 0.5, "epochs": 3}, dataset_path="data.csv") as run:
            for epoch in range(run.params["epochs"]):
                run.log({"loss": 1.0 / (epoch + 1)})
            assert run.offline and run.dataset_path.name == "data.csv"
            run.save_checkpoint({"epoch": 3})
            run.finish(metrics={"auc": 0.8})
    """))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "TRAINYARD_PARAMS": '{"epochs": 5}'}
    subprocess.run([sys.executable, str(script)], cwd=area, env=env, check=True, timeout=60)
    [run_dir] = (area / "trainyard-runs").iterdir()
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(p["step"], p["metrics"]["loss"]) for p in points] == [(i, 1.0 / (i + 1)) for i in range(5)]
    assert json.loads((run_dir / "params.json").read_text()) == {"lr": 0.5, "epochs": 5}
    assert json.loads((run_dir / "summary.json").read_text()) == {"auc": 0.8}
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["ckpt-000000000004.pkl"]


def test_the_sdk_refuses_non_finite_values_and_bad_names() -> None:
    sys.path.insert(0, str(REPO))
    from trainyard.sdk import _name, _number

    with pytest.raises(ValueError, match="finite"):
        _number("loss", float("nan"))
    with pytest.raises(ValueError, match="finite"):
        _number("loss", float("inf"))
    with pytest.raises(ValueError, match="not a number"):
        _number("loss", "0.5")
    with pytest.raises(ValueError, match="control characters"):
        _name("lo\x00ss")
    with pytest.raises(ValueError, match="1 to 200"):
        _name("x" * 201)


@pytest.mark.skipif(os.geteuid() != 0, reason="a job uid of its own needs a runner started as root")
def test_as_root_the_script_runs_as_the_runners_own_uid_and_sees_only_the_interpreter(area: Path) -> None:
    """Even where the interpreter lies under a directory only root can search (a pyenv under /root, as on CI), the
    script runs as this runner's job uid, and sees in that directory the interpreter's directories only."""
    from runners.code_sandbox import JOB_UIDS, _view, job_uid

    uid = job_uid()
    covers = _view(uid)
    outcome, sink = run(area, f"""
        import json, os
        print("UID", os.getuid(), os.getgid(), os.getgroups())
        print("SEEN", json.dumps({{d: sorted(os.listdir(d)) for d in {sorted(covers)!r}}}))
    """)
    assert outcome.status == "completed" and not sink.notes, (outcome, sink.lines, sink.notes)
    assert uid in JOB_UIDS and ("stdout", f"UID {uid} {uid} []") in sink.lines
    seen = json.loads(next(t for _, t in sink.lines if t.startswith("SEEN "))[5:])
    assert seen == {d: sorted({Path(p).relative_to(d).parts[0] for p in needed}) for d, needed in covers.items()}


@pytest.mark.skipif(os.geteuid() != 0, reason="job uids are claimed by runners started as root")
def test_runner_processes_on_one_machine_hold_different_job_uids() -> None:
    """Killing every process of a job's uid at its end must not reach another runner's job: each runner process
    claims a uid of its own, and a uid is free again once its process is gone."""
    from runners.code_sandbox import job_uid

    claim = "from runners.code_sandbox import job_uid; import sys; print(job_uid(), flush=True); sys.stdin.read()"
    procs = [subprocess.Popen([sys.executable, "-c", claim], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        uids = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.communicate("", timeout=30)
    assert len({*uids, job_uid()}) == 3
    again = subprocess.run([sys.executable, "-c", claim], cwd=REPO, input="", capture_output=True, text=True,
                           check=True, timeout=30)
    assert int(again.stdout) in uids  # the lowest free one: a gone process's
