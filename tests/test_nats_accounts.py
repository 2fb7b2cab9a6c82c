"""The embedded bus is closed: each principal may publish and subscribe only what its part of Trainyard needs, and
NATS itself refuses the rest (infra/nats_accounts.py). Against a real nats-server with the config `trainyard up`
writes."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from domain.contract import REPORT_SUBJECT, TELEMETRY_LOGS, TELEMETRY_METRICS, TELEMETRY_PREDICTIONS, work_subject
from infra import nats_accounts
from infra.embedded import EmbeddedNats
from infra.messaging import (EVENTS_STREAM, LOGS_CONSUMER, METRICS_CONSUMER, STUDY_DRIVER_CONSUMER, TELEMETRY_STREAM, WORK_STREAM, connect,
                             ensure_streams, work_consumer)
from infra.nats_accounts import INFERENCE, SERVICE, SUBSCRIBER, NatsCredentials
from infra.settings import Settings
from tests.support.stack import FINISHED, running_up

pytestmark = pytest.mark.integration
RUNNER, OTHER_RUNNER = nats_accounts.runner_user(0), nats_accounts.runner_user(1)
EVENT_SUBJECTS = ("trainyard.v1.api_key.created", "trainyard.v1.deployment.revised")


@pytest.fixture(scope="module")
def bus() -> Iterator[EmbeddedNats]:
    path = Path(tempfile.mkdtemp(prefix="trainyard-nats-accounts-"))
    server = EmbeddedNats(path, preferred_port=0, runners=2)
    server.start()
    asyncio.run(_with(server, SERVICE, lambda nc, js: ensure_streams(js, Settings())))
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


def creds(server: EmbeddedNats, user: str) -> NatsCredentials:
    return NatsCredentials.read(server.credentials(user))


async def _with(server: EmbeddedNats, user: str, body):
    nc, js = await connect(server.url, f"test-{user}", creds(server, user))
    try:
        return await body(nc, js)
    finally:
        await nc.close()


class Watched:
    """A connection as `user` that records the errors the server sends it (permission violations)."""

    def __init__(self, server: EmbeddedNats, user: str) -> None:
        self.server, self.user, self.errors = server, user, []

    async def __aenter__(self) -> nats.NATS:
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))

        c = creds(self.server, self.user)
        self.nc = await nats.connect(self.server.url, user=c.user, password=c.password, error_cb=on_error,
                                     inbox_prefix=c.inbox_prefix or "_INBOX", allow_reconnect=False)
        return self.nc

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def violation(self, what: str, subject: str) -> bool:
        """Whether the server refused `what` ("Publish"/"Subscription") on `subject` (waits up to 2 s)."""
        for _ in range(40):
            if any("permissions violation" in e.lower() and what.lower() in e.lower() and subject.lower() in e.lower()
                   for e in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


async def _published_by(server: EmbeddedNats, user: str, subject: str) -> tuple[bool, bool]:
    """(refused by NATS, seen by a `service` subscriber on `subject`) for a publish by `user`."""
    seen: list[bytes] = []
    watcher = await nats.connect(server.url, user=SERVICE, password=creds(server, SERVICE).password)
    try:
        async def on(msg) -> None:
            seen.append(msg.data)

        await watcher.subscribe(subject, cb=on)
        await watcher.flush()
        w = Watched(server, user)
        async with w as nc:
            await nc.publish(subject, b'{"aggregate_version": 2147483647}')
            await nc.flush()
            refused = await w.violation("Publish", subject)
        await watcher.flush()
        await asyncio.sleep(0.2)
        return refused, bool(seen)
    finally:
        await watcher.close()


async def _subscribe_refused(server: EmbeddedNats, user: str, subject: str) -> bool:
    w = Watched(server, user)
    async with w as nc:
        await nc.subscribe(subject)
        await nc.flush()
        return await w.violation("Subscription", subject)


# ---- files -------------------------------------------------------------------------------------------------------
def test_credentials_files_are_private_and_the_config_holds_only_hashes(bus):
    folder = bus.credentials(SERVICE).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for user in (SERVICE, RUNNER, OTHER_RUNNER, INFERENCE, SUBSCRIBER):
        path = bus.credentials(user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        c = NatsCredentials.read(path)
        assert c.user == user and len(c.password) >= 32
        assert c.password not in bus.config_path.read_text()
    assert stat.S_IMODE(bus.config_path.stat().st_mode) == 0o600
    assert bus.config_path.read_text().count('"$2b$') == 5


def test_no_credentials_or_a_wrong_password_is_refused(bus):
    async def attempt(**login: str) -> None:
        nc = await nats.connect(bus.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0,
                                **login)
        await nc.close()

    for login in ({}, {"user": SERVICE, "password": "guess"}):
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises its authorization error or NoServers
            asyncio.run(attempt(**login))


def test_monitoring_port_is_off_unless_asked_then_on_loopback_only(bus, tmp_path):
    assert bus.monitor_port is None
    server = EmbeddedNats(tmp_path, preferred_port=0, monitor_port=0)
    server.start()
    try:
        assert server.monitor_port
        with socket.create_connection(("127.0.0.1", server.monitor_port), timeout=2):
            pass
        public = [a for a in _addresses() if not a.startswith("127.")]
        for address in public:
            with socket.socket() as s:
                s.settimeout(0.5)
                assert s.connect_ex((address, server.monitor_port)) != 0, address
    finally:
        server.stop()


def _addresses() -> list[str]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no traffic: picks the outgoing interface's address
            return [s.getsockname()[0]]
    except OSError:
        return []


# ---- subscriber --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subject", [REPORT_SUBJECT, TELEMETRY_METRICS, TELEMETRY_PREDICTIONS,
                                     work_subject("medium", "training", uuid.uuid4()), *EVENT_SUBJECTS])
def test_subscriber_cannot_publish_reports_telemetry_work_or_events(bus, subject):
    refused, seen = asyncio.run(_published_by(bus, SUBSCRIBER, subject))
    assert refused and not seen


def test_subscriber_reads_public_events_but_not_telemetry(bus):
    async def body() -> tuple[list[str], bool]:
        got: list[str] = []
        w = Watched(bus, SUBSCRIBER)
        async with w as nc:
            async def on(msg) -> None:
                got.append(msg.subject)

            await nc.subscribe("trainyard.v1.>", cb=on)
            await nc.flush()
            await _with(bus, SERVICE, lambda snc, js: _publish_all(snc, [
                "trainyard.v1.training_job.completed", TELEMETRY_METRICS, "trainyard.v1.dlq.x"]))
            await asyncio.sleep(0.3)
            return got, await _subscribe_refused(bus, SUBSCRIBER, REPORT_SUBJECT)

    got, report_refused = asyncio.run(body())
    assert got == ["trainyard.v1.training_job.completed"] and report_refused


async def _publish_all(nc, subjects: list[str]) -> None:
    for s in subjects:
        await nc.publish(s, b"{}")
    await nc.flush()


# ---- runner ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subject", [*EVENT_SUBJECTS, work_subject("high", "training", uuid.uuid4()),
                                     TELEMETRY_PREDICTIONS])
def test_runner_cannot_publish_events_work_or_prediction_telemetry(bus, subject):
    refused, seen = asyncio.run(_published_by(bus, RUNNER, subject))
    assert refused and not seen


@pytest.mark.parametrize("subject", [REPORT_SUBJECT, "_INBOX.>", f"_INBOX.{OTHER_RUNNER}.>",
                                     "trainyard.work.>", TELEMETRY_METRICS])
def test_runner_cannot_read_reports_or_another_runners_replies(bus, subject):
    assert asyncio.run(_subscribe_refused(bus, RUNNER, subject))


def test_runner_cannot_delete_or_change_streams_and_consumers(bus):
    async def body(nc, js) -> list[str]:
        refused = []
        attempts = {"stream delete": js.delete_stream(EVENTS_STREAM),
                    "consumer delete": js.delete_consumer(WORK_STREAM, work_consumer("medium")),
                    "stream purge": js.purge_stream(WORK_STREAM),
                    "consumer create": js.add_consumer(WORK_STREAM, ConsumerConfig(durable_name="mine"))}
        for name, call in attempts.items():
            try:
                await asyncio.wait_for(call, 3)
            except Exception:  # noqa: BLE001 - no answer (the request never reached the JetStream API)
                refused.append(name)
        return refused

    assert asyncio.run(_with(bus, RUNNER, body)) == ["stream delete", "consumer delete", "stream purge",
                                                     "consumer create"]

    async def still_there(nc, js) -> None:
        await js.stream_info(EVENTS_STREAM)
        await js.consumer_info(WORK_STREAM, work_consumer("medium"))

    asyncio.run(_with(bus, SERVICE, still_there))


def test_runner_takes_work_and_sends_its_reports_and_metrics(bus):
    item = work_subject("medium", "training", uuid.uuid4())

    async def service_side(nc, js):
        await js.publish(item, b"{}")

        async def answer(msg) -> None:
            await msg.respond(b'{"ok": true}')

        return await nc.subscribe(REPORT_SUBJECT, queue="command-handlers", cb=answer)

    async def body() -> tuple[str, bytes, int]:
        snc, sjs = await connect(bus.url, "test-service", creds(bus, SERVICE))
        try:
            await service_side(snc, sjs)
            await snc.flush()

            async def runner(nc, js):
                sub = await js.pull_subscribe_bind(work_consumer("medium"), stream=WORK_STREAM)
                msgs = await sub.fetch(1, timeout=5)
                await msgs[0].ack()
                reply = await nc.request(REPORT_SUBJECT, b'{"type": "claim"}', timeout=5)
                ack = await js.publish(TELEMETRY_METRICS, b"{}")
                logs_ack = await js.publish(TELEMETRY_LOGS, b"{}")
                return msgs[0].subject, reply.data, min(ack.seq, logs_ack.seq)

            return await _with(bus, RUNNER, runner)
        finally:
            await snc.close()

    subject, reply, seq = asyncio.run(body())
    assert subject == item and reply == b'{"ok": true}' and seq >= 1


# ---- inference ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subject", [*EVENT_SUBJECTS, work_subject("medium", "export", uuid.uuid4()),
                                     REPORT_SUBJECT, TELEMETRY_METRICS, TELEMETRY_LOGS])
def test_inference_cannot_publish_events_work_reports_or_job_metrics(bus, subject):
    refused, seen = asyncio.run(_published_by(bus, INFERENCE, subject))
    assert refused and not seen


def test_inference_follows_its_own_consumer_but_not_the_study_drivers(bus):
    async def body(nc, js):
        config = ConsumerConfig(durable_name="inference-test", filter_subjects=["trainyard.v1.deployment.>"],
                                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL)
        await js.add_consumer(EVENTS_STREAM, config)
        ack = await js.publish(TELEMETRY_PREDICTIONS, b"{}")
        try:
            await asyncio.wait_for(js.add_consumer(EVENTS_STREAM, ConsumerConfig(
                durable_name=STUDY_DRIVER_CONSUMER, filter_subject="trainyard.v1.nothing.>")), 3)
            hijacked = True
        except Exception:  # noqa: BLE001
            hijacked = False
        return ack.stream, hijacked

    stream, hijacked = asyncio.run(_with(bus, INFERENCE, body))
    assert stream == TELEMETRY_STREAM and not hijacked


# ---- service -----------------------------------------------------------------------------------------------------
def test_service_administers_streams_publishes_and_consumes(bus):
    subject = "trainyard.v1.training_job.submitted"

    async def body(nc, js):
        await ensure_streams(js, Settings())
        ack = await js.publish(subject, b'{"x": 1}')
        sub = await js.pull_subscribe(subject, durable=f"t-{uuid.uuid4().hex[:8]}", stream=EVENTS_STREAM)
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].ack()
        return ack.stream, json.loads(msgs[-1].data)

    assert asyncio.run(_with(bus, SERVICE, body)) == (EVENTS_STREAM, {"x": 1})


def test_stream_names_match_the_messaging_module():
    assert (nats_accounts._EVENTS, nats_accounts._WORK, nats_accounts._STUDY_DRIVER) == (
        EVENTS_STREAM, WORK_STREAM, STUDY_DRIVER_CONSUMER)
    assert (nats_accounts._TELEMETRY, nats_accounts._STORING) == (TELEMETRY_STREAM, (METRICS_CONSUMER, LOGS_CONSUMER))


# ---- the whole embedded trio, through `trainyard up` -----------------------------------------------------------------
def test_up_runs_a_job_with_every_process_on_its_own_nats_user():
    data_dir = Path(tempfile.mkdtemp(prefix="trainyard-closed-up-"))  # embedded PostgreSQL's user must reach it
    try:
        with running_up(data_dir, {"TRAINYARD_RUNNERS": "1"}) as s:
            endpoints = s.endpoints()
            job_id = s.submit(framework="pytorch", task="binary_classification",
                              dataset={"uri": "builtin://breast_cancer"}, params={"epochs": 3})
            job = s.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
            assert job["status"] == "completed", job
            assert s.full_series(job_id, "valid_loss", 3)  # the runner's metric batches went through
            lines = s.http.get(f"/api/v1/training/jobs/{job_id}/logs").json()["lines"]  # and its log batches
            assert lines[-1]["message"] == "training run 1 completed", lines
            assert "passfile=" in endpoints["postgres"] and "@" not in endpoints["nats"]
            with pytest.raises(Exception):  # noqa: B017 - the bus refuses anyone without credentials
                asyncio.run(_anonymous(endpoints["nats"]))
            for pid, user in ((endpoints["pids"]["serve"], SERVICE), (endpoints["pids"]["runners"][0], RUNNER),
                              (endpoints["pids"]["inference"], INFERENCE)):
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert f"TRAINYARD_NATS_CREDS={data_dir / 'credentials' / f'nats-{user}.json'}".encode() in env
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _anonymous(url: str) -> None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)
    await nc.close()


def test_the_documented_config_is_the_one_up_writes():
    """docs/architecture.md's snippet for an external NATS carries exactly the permissions of the embedded one."""
    creds = {u: NatsCredentials(u, "x", nats_accounts.inbox(u)) for u in nats_accounts.principals(1)}
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert nats_accounts.authorization_block(creds, hashed=False) in doc
