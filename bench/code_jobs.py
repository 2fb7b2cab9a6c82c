"""Code jobs: what the sandbox adds to a script, and what `run.log` costs the training thread.

1. Per-job overhead: a script that logs 1,000 steps through the SDK and exits, run `--runs` times through
   `runners.code_sandbox.run_code` (scrubbed environment, limits, cgroup where possible, the channel, a recording
   sink) and `--runs` times as `python train.py` directly (the SDK offline, writing its local files), alternating,
   in the same run. `overhead_ms=` is the difference of the medians. Goal (issue 19): ≤ 300 ms a job.
2. `run.log` on the training thread: `--calls` calls of a 3-metric dict on a run wired to a socketpair as under
   the runner (a thread drains the other end), mean and p99 of single calls. Goal: ≤ 20 µs a call.

    python -m bench.code_jobs [--runs 10] [--calls 200000]

Ends with `ratio=` (sandboxed median ÷ direct median).
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import ROOT, parser, percentile, print_ratio, work_dir
from runners.code_sandbox import CodeRun, CodeSink, run_code

SCRIPT = """
import trainyard.sdk as ty
with ty.init() as run:
    for step in range(1000):
        run.log({"loss": 1.0 / (step + 1), "acc": step / 1000}, step=step)
    run.finish(metrics={"loss": 0.001})
"""


class Counting(CodeSink):
    def __init__(self) -> None:
        self.points = 0

    def on_metrics(self, step: int, metrics: dict[str, float], ts_ms: int) -> None:
        self.points += 1


def sandboxed(code: Path, area: Path) -> float:
    sink = Counting()
    work = Path(tempfile.mkdtemp(dir=area))
    t = time.perf_counter()
    outcome = run_code(CodeRun(code_dir=code, entrypoint="train.py", work_dir=work), sink, threading.Event())
    elapsed = time.perf_counter() - t
    assert outcome.status == "completed" and sink.points == 1000, (outcome, sink.points)
    return elapsed


def direct(code: Path, area: Path) -> float:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "TRAINYARD_RUNS_DIR": str(area / "runs")}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-s", str(code / "train.py")], cwd=area, env=env, check=True)
    return time.perf_counter() - t


def log_cost(calls: int, area: Path) -> tuple[float, float]:
    """(mean µs, p99 µs) of `run.log` on a run wired as under the runner."""
    ours, theirs = socket.socketpair()
    run_file = area / "run.json"
    run_file.write_text(json.dumps({"run_id": "bench", "params": {}, "output_dir": str(area),
                                    "checkpoint_dir": str(area / "checkpoints")}))
    os.environ.update(TRAINYARD_CHANNEL_FD=str(theirs.fileno()), TRAINYARD_RUN_FILE=str(run_file))
    threading.Thread(target=lambda: all(iter(lambda: ours.recv(1 << 20), b"")), daemon=True).start()
    sys.path.insert(0, str(ROOT))
    import trainyard.sdk as ty

    run = ty.init()
    values = {"loss": 0.5, "acc": 0.9, "lr": 0.001}
    t = time.perf_counter()
    for step in range(calls):
        run.log(values, step=step)
    mean = (time.perf_counter() - t) / calls * 1e6
    singles = []
    clock = time.perf_counter_ns
    for step in range(calls, calls + 20_000):
        t0 = clock()
        run.log(values, step=step)
        singles.append((clock() - t0) / 1000)
    run.finish()
    return mean, percentile(singles, 99)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--calls", type=int, default=200_000)
    args = p.parse_args()
    with work_dir() as area:
        os.chmod(area, 0o755)
        code = area / "code"
        code.mkdir(mode=0o755)
        (code / "train.py").write_text(SCRIPT)
        os.chmod(code / "train.py", 0o644)
        sandboxed(code, area), direct(code, area)  # warm: the SDK copy, the uid probe, the page cache
        sand, plain = [], []
        for _ in range(args.runs):
            sand.append(sandboxed(code, area))
            plain.append(direct(code, area))
        s, d = statistics.median(sand), statistics.median(plain)
        print(f"per job (median of {args.runs}): run_code {s * 1000:.0f} ms, python train.py {d * 1000:.0f} ms")
        print(f"overhead_ms={(s - d) * 1000:.0f}  (goal ≤ 300)")
        mean, p99 = log_cost(args.calls, area)
        print(f"run.log: {mean:.2f} µs a call (mean of {args.calls:,}), p99 {p99:.2f} µs  (goal ≤ 20)")
    print_ratio(s / d)


if __name__ == "__main__":
    main()
