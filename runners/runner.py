"""A runner: pulls work items from JetStream, claims each from its aggregate, runs it, one at a time.

Work items (`trainyard.work.<priority>.<kind>.<id>`) are taken highest priority first through the shared durable
pull consumers `work-<priority>` (built-in kinds) and, on a runner that accepts code (`accepts_code`, Settings
`runner_accepts`), `work-<priority>-code` (jobs running the user's code, runners/code_task.py): an idle runner
looks at its consumers' pending counts when the relay rings `trainyard.signal.work_ready` (or every second), and
fetches from the highest priority that has work. A runner that refuses code never fetches a code item; a runner
with GPUs (runners/capabilities.py) also reads `work-<priority>-gpu[-code]`, first within a priority, and only it
fetches work that needs a GPU. Every `hello_s` it says what it has on `trainyard.rpc.runner.hello`, and each claim
carries that capacity: a job needing more GPUs, CPUs or memory than it has is refused (`unfit`, nothing recorded)
and its item goes back for a bigger runner (this one leaves that consumer's handed-back items to others for a
while; idle runners look for such items every few seconds). A job given GPUs gets device indices 0..n-1 (a code job as its
CUDA_VISIBLE_DEVICES, the PyTorch trainer as its cuda device). For each item
the runner makes a fresh lease token and sends a `claim`; the aggregate answers with the attempt and what to run, or refuses (finished, or another live lease holds it), and the
item is acked either way: from then on the lease, not JetStream, owns the work. While training:
- a heartbeat task renews the lease every `lease_ttl_s / 5` whatever the trainer is doing; its reply is the only
  thing that can stop the job (cancel requested, or the lease is no longer ours). A `cancel_requested` event seen on
  the bus only makes the next heartbeat come at once: a forged message cancels nothing;
- metric points go out in bounded batches on the telemetry stream (`runners/reporting.py`), and so do the job's
  log lines: its output, logging, warnings and a failure's traceback (`runners/log_capture.py`); both are flushed
  before the attempt's end is reported, so what a finished job shows is there to read;
- a watchdog fails the job once it has run past its `timeout_s`.
A stop (SIGTERM) hands the job back (`release`): no attempt is spent. A runner that dies simply stops renewing; the
reconciler requeues the job, spending one attempt of its budget.

Checkpoints (runners/checkpoints.py): before claiming a training job the runner looks for where it should start (the
job's latest checkpoint, or a from_checkpoint retry's original's) and names that step in the claim, which the
attempt's Started event records as `resumed_from_step`; the trainer gets the file (`TrainSpec.resume_from`) and a
callback that saves its checkpoints to the store.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from domain.contract import (EVALUATION_ARTIFACT, REPORT_SUBJECT, RUNNER_HELLO, WORK_READY, ReportReply,
                             RunnerCapabilities, RunnerReport, WorkItem, event_subject, printable)
from domain.resources import gpus_of
from infra.datasets import dataset_digest
from infra.consumer import Consumer, Poison
from infra.code_bundles import BundleLimits
from infra.messaging import LOGS_CONSUMER, METRICS_CONSUMER, WORK_STREAM, work_consumers
from runners.artifacts import ArtifactStore
from runners.capabilities import cpu_count, device_ids, memory_mb
from runners.checkpoints import Checkpoint, CheckpointStore
from runners.log_capture import JobLogs, LogCapture
from runners.reporting import JobReporter, Shipper, log_shipper, metric_shipper, raise_if_cancelled, stored
from runners.trainers import MODEL_SUFFIX, TrainingCancelled, TrainSpec, trainer_for

log = logging.getLogger("trainyard.runner")
CANCEL_EVENTS = event_subject("training_job", "cancel_requested")
CHECKPOINT_SUFFIX = {"pytorch": "pt", "lightgbm": "txt"}
CANCEL_GRACE_S = 3.0  # a trainer deaf to the stop flag this long (a long dataset load): report the cancel anyway
STORED_WAIT_S = 5.0  # at most this long before a job's end report for its telemetry to be stored (reporting.stored)
IDLE_LOOK_S = 1.0  # an idle runner looks for work this often even when no doorbell rings (a lost signal)
UNFIT_DELAY_S = 5.0  # a job too big for this runner comes back to the queue after this (for a bigger runner)
RETRY_LOOK_S = 5.0  # how often (at most; jittered) an idle runner fetches items that were handed back with a delay
UNFIT_BACKOFF_S = 30.0  # a runner found too small on a consumer leaves its handed-back items to others this long


class Lease:
    """One claimed job: its token, the flags the heartbeat sets, and what reports carry."""

    def __init__(self, job_id: str, token: str, correlation_id: str | None, trace_id: str | None) -> None:
        self.job_id, self.token = job_id, token
        self.correlation_id, self.trace_id = correlation_id, trace_id
        self.stop = threading.Event()  # the trainer polls this
        self.cancelled = False  # the aggregate asked to cancel
        self.lost = False  # the lease is no longer ours: stop, report nothing
        self.beat_now = asyncio.Event()  # set by a cancel event seen on the bus: ask the aggregate now
        self.logs = LogCapture(JobLogs(), fds=False)  # run_training gives it the attempt's capture


class Runner:
    def __init__(self, nc: Client, js: JetStreamContext, artifacts: ArtifactStore, lease_ttl_s: float,
                 runner_id: str | None = None, dataset_roots: tuple = (), flush_interval_s: float = 0.25,
                 capture_output: bool = True, accepts_code: bool = True, code_root: Path | None = None,
                 bundle_limits: BundleLimits | None = None, checkpoints: CheckpointStore | None = None,
                 checkpoint_every: tuple[int, float] = (25, 60.0), capabilities: RunnerCapabilities | None = None,
                 hello_s: float = 10.0) -> None:
        """`capture_output`: take fds 1 and 2 into the job's logs while it trains (a runner process's own; off
        where the runner shares its process, as in some tests). `accepts_code`: take code jobs too (their
        bundles are read from `code_root` and unpacked within `bundle_limits`). `checkpoints`: where training jobs
        save and resume (None: they do neither); `checkpoint_every`: (steps, seconds), a checkpoint when either has
        passed. `capabilities`: what it has (runners/capabilities.py `detect`; default: this machine's CPUs and
        memory, no GPU), said every `hello_s`."""
        self.nc, self.js, self.artifacts, self.lease_ttl_s = nc, js, artifacts, lease_ttl_s
        self.checkpoints, self.checkpoint_every = checkpoints, checkpoint_every
        self.capture_output = capture_output
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}"
        self.dataset_roots, self.flush_interval_s = tuple(dataset_roots), flush_interval_s
        self.current: Lease | None = None
        self.accepts_code = accepts_code and code_root is not None
        self.code_root, self.bundle_limits = code_root, bundle_limits or BundleLimits()
        self.capabilities = (capabilities or RunnerCapabilities(cpus=cpu_count(), memory_mb=memory_mb())).model_copy(
            update={"runner_id": self.runner_id, "accepts_code": self.accepts_code})
        self.hello_s = hello_s
        self.unfit: set = set()  # jobs this runner was too small for (logged once); cleared past 10,000
        self._retry_at, self._retry_turn = 0.0, 0  # when and where the next look at handed-back items is
        self._backoff: dict[str, float] = {}  # durable -> until when its handed-back items are left to others
        # (priority, durable), most urgent first
        self.consumers = work_consumers(code=self.accepts_code, gpu=self.capabilities.gpus > 0)

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        # Its consumers, fetched in the order `_waiting_queue` picks; a work item that does not parse is
        # dead-lettered and terminated (it never comes back), anything else is the claim's business.
        queues = {d: Consumer(self.js, WORK_STREAM, d, WorkItem, name=f"runner {d}", terminate_poison=True)
                  for _, d in self.consumers}
        for queue in queues.values():
            await queue.bind()
        ready = asyncio.Event()

        async def ring(_: Msg) -> None:
            ready.set()

        doorbell = await self.nc.subscribe(WORK_READY, cb=ring)
        hints = await self.nc.subscribe(CANCEL_EVENTS, cb=self._cancel_hint)
        hello = asyncio.create_task(self._hellos())
        log.info("runner %s waiting for work (%s)", self.runner_id, self.capabilities.model_dump(exclude={"runner_id"}))
        try:
            while not stop.is_set():
                ready.clear()
                durable = await self._waiting_queue()
                if durable is None:  # nothing queued: sleep until the relay rings (or a while passes)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ready.wait(), IDLE_LOOK_S)
                    continue
                queue = queues[durable]
                for msg in await queue.fetch(1, timeout=0.1):  # none: another runner took it
                    try:
                        item = queue.decode(msg)
                    except Poison as p:
                        await queue.dead_letter(msg, str(p))
                        continue
                    await self.take(msg, item, durable)
        finally:
            await _stop(hello)
            for sub in (doorbell, hints):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _hellos(self) -> None:
        """Say what this runner has, now and every `hello_s` (fire and forget: the next one repairs a lost one)."""
        data = self.capabilities.model_dump_json().encode()
        while True:
            with contextlib.suppress(Exception):
                await self.nc.publish(RUNNER_HELLO, data)
            await asyncio.sleep(self.hello_s)

    async def _waiting_queue(self) -> str | None:
        """The consumer of the highest priority with work items not yet delivered (one look at this runner's
        consumers, concurrently); GPU work first within a priority (on a GPU runner), then built-in, then code.
        Failing that, every RETRY_LOOK_S, one (in turn) with items a claim handed back with a delay (unfit, or
        over quota): JetStream counts those as unacknowledged, not pending, until someone fetches again."""
        try:
            infos = await asyncio.gather(*(self.js.consumer_info(WORK_STREAM, d) for _, d in self.consumers))
        except Exception as e:
            log.debug("work look failed (%s)", type(e).__name__)
            await asyncio.sleep(0.5)
            return None
        pending = next((d for (_, d), info in zip(self.consumers, infos) if info.num_pending), None)
        if pending is not None or time.monotonic() < self._retry_at:
            return pending
        # Jittered, and not where this runner was just too small: runners of one fleet would otherwise take turns
        # in lockstep with the hand-back delay, and the one too small could take the item back every time.
        now = time.monotonic()
        self._retry_at = now + RETRY_LOOK_S * random.uniform(0.5, 1.0)
        held = [d for (_, d), info in zip(self.consumers, infos)
                if info.num_ack_pending and self._backoff.get(d, 0.0) <= now]
        if not held:
            return None
        self._retry_turn += 1
        return held[self._retry_turn % len(held)]

    async def _cancel_hint(self, msg: Msg) -> None:
        """Only a hint: the next heartbeat comes now, and its reply (the aggregate) decides."""
        with contextlib.suppress(Exception):
            if self.current and len(msg.data) <= 65536 and json.loads(msg.data).get(
                    "aggregate_id") == self.current.job_id:
                self.current.beat_now.set()

    async def take(self, msg: Msg, item: WorkItem, durable: str | None = None) -> None:
        token = secrets.token_urlsafe(24)
        resume = await self._starting_point(item)
        reply = await self.report(type="claim", job_id=str(item.aggregate_id), lease=token, deadline_s=20,
                                  resumed_from_step=resume.step if resume else None, capacity=self.capabilities)
        if reply is None or reply.code in ("error", "invalid", "wait", "unfit"):
            # nobody decided, or its project is at its running quota, or it needs more than this runner has: later
            if reply is not None and reply.code == "unfit" and durable is not None:
                self._backoff[durable] = time.monotonic() + UNFIT_BACKOFF_S
            if reply is not None and reply.code == "unfit" and item.aggregate_id not in self.unfit:
                if len(self.unfit) >= 10_000:
                    self.unfit.clear()
                self.unfit.add(item.aggregate_id)  # said once a job: its item comes back every few seconds
                log.info("not claiming %s: %s", item.aggregate_id, reply.error)
            with contextlib.suppress(Exception):
                await msg.nak(delay=UNFIT_DELAY_S if reply is not None and reply.code in ("wait", "unfit") else 1.0)
            return
        await msg.ack()  # decided: the lease (or the refusal) owns it now
        if not reply.ok or not reply.job:
            log.info("not running %s: %s", item.aggregate_id, reply.error)
            return
        job = reply.job
        lease = Lease(str(item.aggregate_id), token, job.get("correlation_id"), job.get("trace_id"))
        await self.run_training(lease, job["attempt"], job["spec"], kind=job.get("kind", "training"), resume=resume)

    async def _starting_point(self, item: WorkItem) -> Checkpoint | None:
        """The checkpoint a training job's next attempt starts from (None: from the beginning, or no store)."""
        if self.checkpoints is None or item.kind not in ("training", "code"):
            return None
        resume_of = str(item.resume_of) if item.resume_of else None
        try:
            return await asyncio.to_thread(self.checkpoints.starting_point, str(item.aggregate_id), resume_of)
        except OSError as e:  # an unreadable store: start over rather than not at all
            log.warning("job %s: no checkpoint looked up (%s)", item.aggregate_id, printable(e, 300))
            return None

    # ---- one job ---------------------------------------------------------------------------------
    async def run_training(self, lease: Lease, attempt: int, spec: dict[str, Any], kind: str = "training",
                           resume: Checkpoint | None = None) -> None:
        """Run one claimed piece of work (`kind` "training", or "export": runners/export_task.py) under its lease;
        a training job from the checkpoint `resume` when there is one."""
        self.current = lease
        loop, watched = asyncio.get_running_loop(), asyncio.Event()
        reporter = JobReporter(lease.stop, watch=spec.get("report_metric"),
                               on_watch=lambda: loop.call_soon_threadsafe(watched.set))
        shipper = metric_shipper(self.js, reporter, lease.job_id, attempt, self.runner_id)
        lease.logs = LogCapture(JobLogs(), fds=self.capture_output)
        logs = log_shipper(self.js, lease.logs, lease.job_id, attempt, self.runner_id)
        heartbeat = asyncio.create_task(self._heartbeats(lease, reporter))  # until the last report is answered
        shipping = [asyncio.create_task(s.run(self.flush_interval_s)) for s in (shipper, logs)]
        intermediates = asyncio.create_task(self._intermediates(lease, reporter, watched))
        lease.logs.start()
        resuming = f", resuming from the checkpoint of step {resume.step}" if resume else ""
        lease.logs.logs.note("info", f"{kind} run {attempt} started on runner {self.runner_id}{resuming}")
        try:
            try:
                train = asyncio.create_task(self._export(lease, attempt, spec, reporter) if kind == "export" else
                                            self._train(lease, attempt, spec, reporter, resume, shipper))
                outcome = await self._until_done(train, lease, spec)
            except asyncio.CancelledError:  # this runner is stopping: hand the job back unharmed
                lease.stop.set()
                lease.logs.stop()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.report(type="release", job_id=lease.job_id, lease=lease.token,
                                                     lease_obj=lease, deadline_s=5))
                raise
            finally:
                lease.logs.stop()
                await _stop(*shipping, intermediates)
            has_traceback = outcome.pop("traceback", False)
            if outcome["type"] == "failed" and not has_traceback:  # a timeout, a failed export: its reason
                lease.logs.logs.note("error", outcome.get("error") or "failed")
            ended = "stopped: its lease was lost" if lease.lost else "cancelled" if lease.cancelled else outcome["type"]
            lease.logs.logs.note("error" if outcome["type"] == "failed" else "info", f"{kind} run {attempt} {ended}")
            await logs.flush_all(deadline_s=10.0)
            if lease.lost:
                log.info("job %s: lease lost; reporting nothing", lease.job_id)
                return
            await shipper.flush_all()
            if not await stored(self.js, {METRICS_CONSUMER: shipper.last_seq, LOGS_CONSUMER: logs.last_seq},
                                STORED_WAIT_S):
                log.info("job %s: its last telemetry is not stored yet; reporting its end anyway", lease.job_id)
            if lease.cancelled:
                outcome = {"type": "cancelled"}
            if reporter.step_seen and outcome["type"] == "completed":  # its progress comes with it
                outcome = {**outcome, "total_steps": reporter.total_steps or None}
            elif reporter.step_seen:
                await self.report(type="heartbeat", job_id=lease.job_id, lease=lease.token, lease_obj=lease,
                                  current_step=reporter.step_seen, total_steps=reporter.total_steps, deadline_s=30)
            await self.report(job_id=lease.job_id, lease=lease.token, lease_obj=lease, deadline_s=600, **outcome)
        finally:
            await _stop(heartbeat)
            self.current = None

    async def _until_done(self, train: asyncio.Task, lease: Lease, spec: dict[str, Any]) -> dict[str, Any]:
        """The trainer's outcome; or a cancel/timeout outcome when the trainer does not stop in time."""
        timeout_s = float(spec.get("timeout_s") or 3600)
        deadline = time.monotonic() + timeout_s
        stopped_at: float | None = None
        while True:
            done, _ = await asyncio.wait({train}, timeout=0.2)
            if done:
                outcome = train.result()
                if time.monotonic() > deadline and outcome["type"] != "completed":
                    return _timed_out(timeout_s)
                return outcome
            if lease.lost:
                return {"type": "cancelled"}
            if time.monotonic() > deadline and not lease.stop.is_set():
                log.warning("job %s ran past its timeout_s of %d s", lease.job_id, timeout_s)
                lease.stop.set()
            if lease.stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > CANCEL_GRACE_S:  # deaf trainer: answer now, let it finish alone
                    return _timed_out(timeout_s) if time.monotonic() > deadline else {"type": "cancelled"}

    async def _train(self, lease: Lease, attempt: int, spec: dict[str, Any], reporter: JobReporter,
                     resume: Checkpoint | None = None, metrics: Shipper | None = None) -> dict[str, Any]:
        if resume is not None and resume.job_id != lease.job_id:  # a retry's first run: the original's, made ours
            resume = await asyncio.to_thread(self.checkpoints.adopt, resume, lease.job_id, attempt)
        if spec.get("code") is not None:
            return await self._run_code(lease, attempt, spec, reporter, resume, metrics)
        train_spec = TrainSpec(framework=spec["framework"], task=spec["task"], dataset_uri=spec["dataset"]["uri"],
                               target=spec["dataset"].get("target"), params=spec.get("params") or {},
                               dataset_roots=self.dataset_roots, resume_from=resume.path if resume else None,
                               checkpoint=self._saver(lease, attempt, spec["framework"], metrics),
                               checkpoint_every_steps=self.checkpoint_every[0],
                               checkpoint_every_s=self.checkpoint_every[1], gpus=self._devices(spec, physical=False),
                               validation=spec.get("validation"), dataset=spec["dataset"])
        try:
            # The trainer is looked up in the worker thread too: its first use imports the framework (PyTorch: seconds
            # on a busy machine), which on this loop would hold up the heartbeats past the lease's TTL.
            result = await asyncio.to_thread(lease.logs.within(_fit), train_spec, reporter)
        except TrainingCancelled:
            return {"type": "cancelled"}
        except Exception as e:  # the user's data or params broke training: the job fails, the runner lives
            log.warning("job %s attempt %d failed: %s", lease.job_id, attempt, printable(e, 300))
            lease.logs.logs.exception(e)
            return {"type": "failed", "error": printable(f"{type(e).__name__}: {e}"), "traceback": True}
        if spec.get("champion"):  # a retrain: the deployed model scored on the same test rows (runners/champion.py)
            from runners.champion import with_champion

            result = await asyncio.to_thread(with_champion, train_spec, spec["champion"], result, self.artifacts,
                                             self.dataset_roots)
        art = await asyncio.to_thread(self.artifacts.put, lease.job_id, attempt, result.model_bytes,
                                      MODEL_SUFFIX[result.model_format])
        artifact: dict[str, Any] = {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size_bytes,
                                    "format": result.model_format, "feature_names": list(result.feature_names)}
        if result.class_labels is not None:
            artifact["class_labels"] = list(result.class_labels)
        if result.feature_recipe is not None:
            artifact["feature_recipe"] = result.feature_recipe
        if result.best_step is not None:
            artifact["best_step"] = result.best_step
        with contextlib.suppress(Exception):  # lineage: which data it learned from (best effort)
            artifact["dataset_sha256"] = await asyncio.to_thread(dataset_digest, train_spec.dataset_uri,
                                                                 self.dataset_roots)
        outcome = {"type": "completed", "final_metrics": result.final_metrics, "artifact": artifact}
        if result.evaluation is not None:
            report = await asyncio.to_thread(self._keep_json, lease.job_id, attempt, result.evaluation)
            outcome["artifacts"] = [{"name": EVALUATION_ARTIFACT, **report}]
        return outcome

    def _keep_json(self, job_id: str, attempt: int, document: dict[str, Any]) -> dict[str, Any]:
        """Store `document` as a JSON file beside the attempt's model: its uri, sha256 and size."""
        with tempfile.NamedTemporaryFile("wb", suffix=".json") as handle:
            handle.write(json.dumps(document, separators=(",", ":"), allow_nan=False).encode())
            handle.flush()
            art = self.artifacts.put_file(job_id, attempt, Path(handle.name))
        return {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size_bytes}

    async def _run_code(self, lease: Lease, attempt: int, spec: dict[str, Any], reporter: JobReporter,
                        resume: Checkpoint | None, metrics: Shipper | None) -> dict[str, Any]:
        from runners.code_task import run_code_job

        if not self.accepts_code or self.code_root is None:  # a mis-routed item: another runner takes it
            return {"type": "failed", "error": f"runner {self.runner_id} does not run code jobs"}
        try:
            return await asyncio.to_thread(run_code_job, lease.job_id, attempt, spec, reporter, lease.logs.logs,
                                           self.artifacts, self.code_root, self.bundle_limits, self.dataset_roots,
                                           resume.path if resume else None,
                                           self._saver(lease, attempt, "python", metrics),
                                           self._devices(spec, physical=True))
        except Exception as e:  # the bundle or the work dir broke, not the script: the job fails, the runner lives
            log.warning("code job %s attempt %d failed: %s", lease.job_id, attempt, printable(e, 300))
            lease.logs.logs.exception(e)
            return {"type": "failed", "error": printable(f"{type(e).__name__}: {e}"), "traceback": True}

    def _saver(self, lease: Lease, attempt: int, framework: str,
               metrics: Shipper | None) -> Callable[[int, bytes | Path], None] | None:
        """The trainer's checkpoint callback (training thread). The step's metric points are published first: a
        run resumed from the checkpoint logs from the next step on, so every step before it must be on the stream
        already. A checkpoint not saved (NATS or the disk away) is logged and training goes on."""
        store, loop = self.checkpoints, asyncio.get_running_loop()
        if store is None:
            return None
        suffix = CHECKPOINT_SUFFIX.get(framework, "bin")

        def save(step: int, data: bytes | Path) -> None:
            """`data`: the checkpoint's bytes, or a file holding them (a code job's)."""
            try:
                if metrics is not None and not asyncio.run_coroutine_threadsafe(metrics.flush(), loop).result(30):
                    raise OSError("its metric points could not be published")
                if isinstance(data, Path):
                    store.save_file(lease.job_id, attempt, step, data)
                else:
                    store.save(lease.job_id, attempt, step, data, suffix)
            except Exception as e:  # a checkpoint only saves time: never the job's failure
                lease.logs.logs.note("warning", f"checkpoint of step {step} not saved: {printable(e, 300)}")

        return save

    def _devices(self, spec: dict[str, Any], physical: bool) -> tuple[int, ...]:
        """The devices a job that asked for GPUs is given (one job at a time: the first ones): torch indices for the
        trainer in this process, the ids its CUDA_VISIBLE_DEVICES names for a code job's own process."""
        count = min(gpus_of(spec.get("resources")), self.capabilities.gpus)
        return device_ids(count) if physical else tuple(range(count))

    async def _export(self, lease: Lease, attempt: int, spec: dict[str, Any], reporter: JobReporter) -> dict[str, Any]:
        from runners.export_task import run_export

        return await asyncio.to_thread(lease.logs.within(run_export), lease.job_id, attempt, spec, self.artifacts,
                                       self.dataset_roots, reporter)

    async def _heartbeats(self, lease: Lease, reporter: JobReporter) -> None:
        """Renew the lease on its own clock; the reply says whether to go on."""
        interval = self.lease_ttl_s / 5
        while not lease.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lease.beat_now.wait(), interval)
            check, _ = lease.beat_now.is_set(), lease.beat_now.clear()
            reply = await self.report(type="check" if check else "heartbeat", job_id=lease.job_id, lease=lease.token, lease_obj=lease,
                                      current_step=reporter.step_seen or None,
                                      total_steps=reporter.total_steps or None, deadline_s=interval)
            if reply is None:
                continue  # unanswered: try again next beat; the lease stays ours until its ttl runs out
            if reply.ok and reply.cancel_requested:
                lease.cancelled = True
                lease.stop.set()
            elif not reply.ok and reply.code in ("stale_lease", "finished", "not_found"):
                lease.lost = True
                lease.stop.set()

    async def _intermediates(self, lease: Lease, reporter: JobReporter, watched: asyncio.Event) -> None:
        """A study trial's objective after each step (the latest one, if steps outrun the replies); the reply
        says whether the study pruned the trial, which stops it like a cancel."""
        last = 0
        while not lease.stop.is_set():
            await watched.wait()
            watched.clear()
            step, value = reporter.watched or (0, 0.0)
            if step <= last:
                continue
            last = step
            reply = await self.report(type="intermediate", job_id=lease.job_id, lease=lease.token, lease_obj=lease,
                                      current_step=step, total_steps=reporter.total_steps or None, value=value,
                                      deadline_s=5)
            if reply is not None and reply.ok and reply.cancel_requested:
                lease.cancelled = True
                lease.stop.set()

    async def report(self, deadline_s: float, lease_obj: Lease | None = None, **fields: Any) -> ReportReply | None:
        """Send a report; retry until answered (an `error` answer is retried too) or `deadline_s` passes (None)."""
        meta = {"correlation_id": lease_obj.correlation_id, "trace_id": lease_obj.trace_id} if lease_obj else {}
        data = RunnerReport(runner_id=self.runner_id, report_id=secrets.token_hex(8), **meta,
                            **fields).model_dump_json().encode()
        deadline, delay = time.monotonic() + deadline_s, 0.1
        reply = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = await self.nc.request(REPORT_SUBJECT, data, timeout=max(0.2, min(10.0, remaining)))
                reply = ReportReply.model_validate_json(msg.data)
                if reply.code != "error":
                    return reply
            except Exception as e:
                log.debug("report %s not answered (%s)", fields.get("type"), type(e).__name__)
            raise_if_cancelled()
            if time.monotonic() + delay > deadline:
                return reply
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _stop(*tasks: asyncio.Task, timeout_s: float = 5.0) -> None:
    """Cancel `tasks` and wait for them, at most `timeout_s`: a task that will not end (a swallowed cancel) is
    logged and left behind rather than holding up the job's outcome."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        log.error("task %s did not stop within %.0f s after its cancel", task.get_name(), timeout_s)


def _fit(spec: TrainSpec, reporter: JobReporter) -> Any:
    return trainer_for(spec.framework, spec.task).fit(spec, reporter)


def _timed_out(timeout_s: float) -> dict[str, Any]:
    return {"type": "failed", "error": f"ran past its timeout_s of {timeout_s:g} s and was stopped"}
