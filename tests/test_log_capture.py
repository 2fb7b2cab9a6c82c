"""A job's logs as the runner captures them (runners/log_capture.py) and cuts them into batches (reporting.py):
in this process, with its real fds 1 and 2."""
from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
import warnings

import pytest

from domain.contract import MAX_BATCH_LINES, MAX_LOG_MESSAGE, LogBatch, LogLine
from runners.log_capture import JobLogs, LogCapture
from runners.reporting import log_batches


def captured(body, capfd=None, **logs_kw) -> list[LogLine]:
    """The lines `body` leaves when it runs in a worker thread while the capture is on."""
    capture = LogCapture(JobLogs(**logs_kw))
    capture.start()
    try:
        worker = threading.Thread(target=capture.within(body))
        worker.start()
        worker.join()
    finally:
        capture.stop()
    return capture.logs.drain()


def test_output_logging_and_warnings_of_the_training_thread_are_captured_and_passed_on(capfd) -> None:
    logging.getLogger("trainer").setLevel(logging.INFO)  # a runner process logs at INFO (pytest: WARNING)

    def train() -> None:
        print("python print", file=sys.__stdout__, flush=True)  # pytest's sys.stdout is not fd 1
        os.write(1, b"[LightGBM] [Info] Total Bins 5676\n[LightGBM] [Warning] No further splits\n")
        os.write(2, b"native error \x1b[31mred\x1b[0m\tand a NUL \x00 here\n")
        logging.getLogger("trainer").warning("a logged %s", "warning")
        logging.getLogger("trainer").info("an info record")
        warnings.warn("deprecated thing", DeprecationWarning)

    elsewhere = threading.Thread(target=lambda: logging.getLogger("trainer").error("another thread's record"))
    lines = captured(lambda: (train(), elsewhere.start(), elsewhere.join()))
    got = {(line.stream, line.level, line.message) for line in lines}
    assert ("stdout", "info", "python print") in got
    assert ("stdout", "info", "[LightGBM] [Info] Total Bins 5676") in got
    assert ("stdout", "warning", "[LightGBM] [Warning] No further splits") in got
    assert ("stderr", "warning", "native error red\tand a NUL \ufffd here") in got
    assert ("logging", "warning", "a logged warning") in got
    assert ("logging", "info", "an info record") in got
    assert any(s == "logging" and lv == "warning" and "DeprecationWarning: deprecated thing" in m for s, lv, m in got)
    assert not any("another thread" in m for _, _, m in got)
    assert [line.seq for line in lines] == list(range(len(lines)))
    out, err = capfd.readouterr()  # the process's output is unchanged
    assert "python print" in out and "Total Bins" in out and "native error" in err
    print("after the capture")
    assert "after the capture" in capfd.readouterr().out  # fds restored


def test_a_2_mb_line_is_cut_with_a_visible_marker() -> None:
    lines = captured(lambda: (os.write(1, b"x" * 2_000_000 + b"\nnext line\n"), None))
    assert [line.message for line in lines][1:] == ["next line"]
    long = lines[0].message
    assert len(long) <= MAX_LOG_MESSAGE and long.startswith("xxxx")
    assert long.endswith(f"… [truncated {2_000_000 - (MAX_LOG_MESSAGE - 40):,} bytes]")
    logged = captured(lambda: logging.getLogger("t").warning("y" * 100_000))
    assert logged[0].message.endswith(f"… [truncated {100_000 - (MAX_LOG_MESSAGE - 40):,} bytes]")


def test_past_the_rate_cap_lines_are_dropped_visibly() -> None:
    now = [100.0]
    logs = JobLogs(rate=1000, clock=lambda: now[0])
    for i in range(2500):
        logs.add("info", "stdout", f"line {i}")
    now[0] = 101.0
    logs.add("info", "stdout", "a later second")
    lines = logs.drain()
    assert [line.message for line in lines[:1000]] == [f"line {i}" for i in range(1000)]
    assert lines[1000].level == "warning" and lines[1000].message.startswith("1,500 lines dropped")
    assert lines[1001].message == "a later second" and len(lines) == 1002
    for i in range(5):
        logs.add("info", "stdout", f"{i}")
    assert len(logs.drain()) == 5  # no notice when nothing was dropped

    full = JobLogs(rate=10**9, max_chars=50_000)  # lines waiting (NATS away): bounded by their size too
    for _ in range(10):
        full.add("info", "stdout", "z" * 10_000)
    assert [len(x.message) for x in full.drain()] == [10_000] * 5 + [len("5 lines dropped (more than 1,000,000,000 "
                                                                         "lines/s, or too many waiting to be shipped)")]


def test_a_traceback_is_error_lines() -> None:
    logs = JobLogs(rate=1)
    try:
        raise ValueError("the dataset has 3 classes")
    except ValueError as e:
        logs.exception(e)
    lines = logs.drain()
    assert lines[0].message == "Traceback (most recent call last):" and lines[-1].message == (
        "ValueError: the dataset has 3 classes")
    assert {line.level for line in lines} == {"error"} and len(lines) > 2  # past the rate cap


@pytest.mark.parametrize("message", ["a", "\U0001F600" * 16_000, "\"" * MAX_LOG_MESSAGE])
def test_batches_stay_within_the_contract_and_the_payload(message: str) -> None:
    logs = JobLogs(rate=10**9)
    for _ in range(2500):
        logs.add("info", "stdout", message)
    lines = logs.drain()
    batches = log_batches(str(uuid.uuid4()), 1, "runner-0", lines)
    assert [line for b in batches for line in b.lines] == lines
    for batch in batches:
        data = batch.model_dump_json().encode()
        assert len(data) < 800_000 and len(batch.lines) <= MAX_BATCH_LINES
        assert LogBatch.model_validate_json(data) == batch
