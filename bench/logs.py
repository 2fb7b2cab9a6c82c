"""Training logs: what capturing costs the trainer, and how fast a job's log is read back.

1. Capture: a worker thread writes --lines lines of --width bytes to fd 1 with os.write (what LightGBM's and
   PyTorch's C code does), first with fd 1 on /dev/null, then under `LogCapture` (fd 1 on a pipe, a reader
   thread passing the bytes on to /dev/null and cutting them into lines), keeping every line, then under the
   runner's cap. Prints the rates and the lines kept.
2. Reads: --stored lines of one job go into chDB through LogStore.insert_batches (1,000 per batch, a tenth of
   them warnings), then `LogStore.lines` is timed (median of --repeats after a warm-up) for the default tail of
   200, warnings only, a substring search, and a follower's page after a cursor in the middle.

    .venv/bin/python -m bench.logs [--lines 200000] [--stored 1000000]

Ends with `ratio=<captured rate under the cap / uncaptured rate>` (1: capture costs the writer nothing).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
import uuid

from bench.harness import parser, print_ratio, work_dir
from domain.contract import LogBatch, LogLine
from infra.clickhouse import connect as connect_clickhouse
from projections.telemetry.log_store import LogQuery, LogStore
from runners.log_capture import JobLogs, LogCapture


def write(lines: int, width: int) -> float:
    """Seconds a thread takes to write `lines` lines to fd 1."""
    line = (b"[LightGBM] [Info] " + b"x" * width)[:width] + b"\n"
    took = [0.0]

    def body() -> None:
        start = time.perf_counter()
        for _ in range(lines):
            os.write(1, line)
        took[0] = time.perf_counter() - start

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    return took[0]


def capture(lines: int, width: int) -> float:
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        plain = write(lines, width)
        said = [f"capture: {lines:,} lines of {width} bytes: {lines / plain:,.0f} lines/s to /dev/null"]
        for what, logs in (("every line kept", JobLogs(rate=10**9, max_lines=10**9, max_chars=10**12)),
                           ("the runner's cap of 1,000 lines/s", JobLogs())):
            cap = LogCapture(logs)
            cap.start()
            try:
                captured = write(lines, width)
            finally:
                cap.stop(join_s=60)
            said.append(f"capture: {lines / captured:,.0f} lines/s captured, {what} ({len(logs.drain()):,} lines "
                        "kept)")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    print("\n".join(said))  # fd 1 is /dev/null until here
    return plain / captured


def reads(stored: int, repeats: int) -> None:
    with work_dir() as work:
        store = LogStore(connect_clickhouse(None, work / "chdb"))
        store.ensure_schema()
        job = str(uuid.uuid4())
        start = time.perf_counter()
        for first in range(0, stored, 1000):
            lines = [LogLine(seq=s, ts_ms=1_700_000_000_000 + s, level="warning" if s % 10 == 0 else "info",
                             stream="stdout", message=f"[LightGBM] [Info] round {s} of the boosting, all well")
                     for s in range(first, min(stored, first + 1000))]
            store.insert_batches([LogBatch(batch_id=f"{job}-{first}", job_id=job, attempt=1, runner_id="bench:1",
                                           lines=lines)], f"{job}-{first}")
        load = time.perf_counter() - start
        print(f"reads: inserted {stored:,} lines in {load:.1f} s ({stored / load:,.0f} lines/s)")
        queries = {"tail 200": LogQuery(tail=True, limit=200), "warnings, first 1000": LogQuery(level="warning"),
                   "q='round 4242 ', first 1000": LogQuery(q="round 4242 "),
                   "after the middle, 1000": LogQuery(after=(1, stored // 2))}
        for name, query in queries.items():
            store.lines(job, query)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                store.lines(job, query)
                times.append(time.perf_counter() - t)
            print(f"reads: {name}: {statistics.median(times) * 1000:.1f} ms (median of {repeats})")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--stored", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ratio = capture(args.lines, args.width)
    reads(args.stored, args.repeats)
    print_ratio(ratio)


if __name__ == "__main__":
    main()
