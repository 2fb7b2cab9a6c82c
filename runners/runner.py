"""A runner process: pulls training work from JetStream and runs it, one job at a time.

Work items are the `submitted` events the relay also puts on `trainyard.work.training.<priority>`, taken
highest priority first through the shared durable pull consumers `runners-<priority>` (explicit ack, ack wait
+ in-progress heartbeats). The delivery count is the
attempt number: a runner that dies mid-job stops heartbeating, JetStream redelivers after the ack
wait, and the next runner starts attempt N+1. Lifecycle reports go to the command handlers
(commands/runner_reports.py) and are retried until answered; metric points go out in batches on
the telemetry stream. Training runs in a worker thread; cancel reaches it through `should_stop`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from commands.runner_reports import ReportReply, RunnerReport, decode_reply, encode
from domain.telemetry import MetricBatch, SeriesChunk
from infra.messaging import (JOB_CANCEL_REQUESTED, PRIORITIES, REPORT_SUBJECT, TELEMETRY_METRICS, WORK_STREAM,
                             connect, dlq_subject, ensure_streams, pulled, work_consumer)
from infra.settings import Settings
from runners.artifacts import ArtifactStore, LocalArtifactStore
from runners.trainers import MODEL_SUFFIX, TrainingCancelled, TrainSpec, trainer_for

log = logging.getLogger("trainyard.runner")


class JobReporter:
    """The trainer's `Reporter`: buffers points from the training thread for the async side to ship."""

    def __init__(self, stop_flag: threading.Event) -> None:
        self.stop_flag = stop_flag
        self._lock = threading.Lock()
        self._series: dict[str, SeriesChunk] = {}
        self.step_seen = 0
        self.total_steps = 0

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        ts_ms = time.time_ns() // 1_000_000
        with self._lock:
            for name, value in metrics.items():
                chunk = self._series.setdefault(name, SeriesChunk(steps=[], values=[], ts_ms=[]))
                chunk.steps.append(step)
                chunk.values.append(float(value))
                chunk.ts_ms.append(ts_ms)
            self.step_seen, self.total_steps = step, total_steps

    def should_stop(self) -> bool:
        return self.stop_flag.is_set()

    def drain(self) -> dict[str, SeriesChunk]:
        with self._lock:
            series, self._series = self._series, {}
        return series


class Runner:
    def __init__(self, nc: Client, js: JetStreamContext, artifacts: ArtifactStore, ack_wait_s: float,
                 runner_id: str | None = None, flush_interval_s: float = 0.25, progress_interval_s: float = 1.0) -> None:
        self.nc, self.js, self.artifacts = nc, js, artifacts
        self.ack_wait_s = ack_wait_s
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.flush_interval_s, self.progress_interval_s = flush_interval_s, progress_interval_s
        self._current: tuple[str, threading.Event] | None = None

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        subs = [await self.js.pull_subscribe_bind(work_consumer(p), stream=WORK_STREAM) for p in PRIORITIES]
        cancel_sub = await self.nc.subscribe(JOB_CANCEL_REQUESTED, cb=self._on_cancel_requested)
        log.info("runner %s waiting for work", self.runner_id)
        try:
            async for msgs in pulled(subs, stop, 1, timeout=0.05):
                for msg in msgs:
                    await self.work(msg)
        finally:
            await cancel_sub.unsubscribe()

    async def _on_cancel_requested(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            job_id = json.loads(msg.data)["aggregate_id"]
            if self._current and self._current[0] == job_id:
                log.info("cancel requested for %s", job_id)
                self._current[1].set()

    # ---- one job ---------------------------------------------------------------------------------
    async def work(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
            job_id, job = event["aggregate_id"], event["payload"]
        except (ValueError, KeyError, TypeError):
            log.error("malformed work item dead-lettered")
            with contextlib.suppress(Exception):
                await self.js.publish(dlq_subject(msg.subject), msg.data)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        reply = await self.report(type="started", job_id=job_id, attempt=attempt)
        if not reply.ok:  # finished, unknown or superseded: nothing to do
            log.info("skipping %s attempt %d: %s", job_id, attempt, reply.error)
            await self._settle(msg, reply)
            return
        stop_flag = threading.Event()
        if reply.cancel_requested:
            stop_flag.set()
        self._current = (job_id, stop_flag)
        reporter = JobReporter(stop_flag)
        heartbeat = asyncio.create_task(self._heartbeat(msg))  # until the work item is settled
        try:
            side = asyncio.create_task(self._alongside(job_id, attempt, reporter))
            try:
                outcome = await self._train(job_id, attempt, job, reporter)
            except asyncio.CancelledError:  # this runner is shutting down: hand the job to another runner
                stop_flag.set()
                with contextlib.suppress(Exception):
                    # after a second: when the whole fleet stops, no stopping runner's last pull catches it
                    await msg.nak(delay=1.0)
                raise
            finally:
                side.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await side
                self._current = None
            await self._flush(job_id, attempt, reporter)
            if reporter.step_seen:  # the last progress, which throttling may have held back
                await self.report(type="progress", job_id=job_id, attempt=attempt,
                                  current_step=reporter.step_seen, total_steps=reporter.total_steps)
            await self._settle(msg, await self.report(job_id=job_id, attempt=attempt, **outcome))
        finally:
            heartbeat.cancel()

    @staticmethod
    async def _settle(msg: Msg, reply: ReportReply) -> None:
        """Ack the work item, unless a newer attempt holds it: acks go by stream sequence, so ours would ack
        the other runner's delivery and a later loss of that runner would never be redelivered."""
        if reply.ok or reply.code in ("finished", "not_found"):
            await msg.ack()
        else:
            log.info("leaving the work item to the job's current attempt %s (%s)", reply.attempt, reply.code)

    async def _train(self, job_id: str, attempt: int, job: dict[str, Any], reporter: JobReporter) -> dict[str, Any]:
        spec = TrainSpec(framework=job["framework"], task=job["task"], dataset_uri=job["dataset"]["uri"],
                         target=job["dataset"].get("target"), params=job.get("params") or {})
        try:
            result = await asyncio.to_thread(trainer_for(spec.framework).fit, spec, reporter)
        except TrainingCancelled:
            return {"type": "cancelled"}
        except Exception as e:  # the user's data or params broke training: the job fails, the runner lives
            log.exception("job %s attempt %d failed", job_id, attempt)
            return {"type": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        art = await asyncio.to_thread(self.artifacts.put, job_id, attempt, result.model_bytes,
                                      MODEL_SUFFIX[result.model_format])
        artifact = {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size_bytes, "format": result.model_format}
        return {"type": "completed", "final_metrics": result.final_metrics, "artifact": artifact}

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream the work item is in progress, on its own clock: slow reports must not delay it."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 4)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _alongside(self, job_id: str, attempt: int, reporter: JobReporter) -> None:
        """While training: ship metric batches, report progress (and learn of cancels and newer attempts)."""
        last_progress = time.monotonic()
        reported_step = 0
        while True:
            await asyncio.sleep(self.flush_interval_s)
            now = time.monotonic()
            await self._flush(job_id, attempt, reporter)
            if reporter.step_seen > reported_step and now - last_progress >= self.progress_interval_s:
                reported_step, last_progress = reporter.step_seen, now
                reply = await self.report(type="progress", job_id=job_id, attempt=attempt,
                                          current_step=reporter.step_seen, total_steps=reporter.total_steps)
                if reply.cancel_requested or reply.code in ("finished", "stale_attempt"):
                    reporter.stop_flag.set()

    async def _flush(self, job_id: str, attempt: int, reporter: JobReporter) -> None:
        series = reporter.drain()
        if not series:
            return
        batch = MetricBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=attempt,
                            runner_id=self.runner_id, series=series)
        data = batch.model_dump_json().encode()
        while True:  # the same batch id on every try: JetStream dedupes a retry that did land
            try:
                await self.js.publish(TELEMETRY_METRICS, data, headers={"Nats-Msg-Id": batch.batch_id})
                return
            except Exception:
                log.warning("metric batch publish failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)

    async def report(self, **fields: Any) -> ReportReply:
        """Send a lifecycle report; retry until a command handler answers."""
        data = encode(RunnerReport(runner_id=self.runner_id, **fields))
        delay = 0.2
        while True:
            try:
                return decode_reply((await self.nc.request(REPORT_SUBJECT, data, timeout=10)).data)
            except Exception as e:
                log.warning("report %s not answered (%s); retrying", fields.get("type"), type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def run_runner(settings: Settings) -> None:
    """The `trainyard runner` process: until SIGINT/SIGTERM, then hands its job back."""
    _, nats_url = settings.require_urls()
    nc, js = await connect(nats_url, f"trainyard-runner-{os.getpid()}")
    await ensure_streams(js, settings)
    runner = Runner(nc, js, LocalArtifactStore(settings.artifacts), settings.runner_ack_wait_s)
    stop = asyncio.Event()
    main = asyncio.create_task(runner.run(stop))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (stop.set(), main.cancel()))
    with contextlib.suppress(asyncio.CancelledError):
        await main
    with contextlib.suppress(Exception):
        await nc.close()
    log.info("runner %s stopped", runner.runner_id)
