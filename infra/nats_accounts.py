"""Who may publish and subscribe what on the bus: the NATS users of an embedded nats-server, their credentials files
and the server's `authorization` block.

Principals (docs/architecture.md "### NATS accounts" has the same table as a config snippet for an external NATS):
- `service`     the API, relay, projectors, report handlers, reconciler, study driver: everything.
- `runner-<i>`  one user per runner `trainyard up` spawns: fetch and ack work on TRAINYARD_WORK, read the work doorbell
                and cancel hints, publish its reports, what it has (the runner hello), its metric and log batches and
                dead letters of work items, and see whether the telemetry consumers have stored its last batches. Each has
                its own inbox prefix (`_INBOX.runner-<i>`), so a runner cannot read the replies another runner gets
                (claim replies carry the job's spec). It may not touch events, publish work, or create, update or
                delete streams and consumers.
- `inference`   the inference server: its own durable consumer on the deployment and API-key events, prediction
                telemetry, dead letters of those events.
- `subscriber`  read-only core-NATS subscriptions on the public events `trainyard.v1.>` (not telemetry, not dead
                letters); publishes nothing.

Passwords come from `secrets`, live in clear only in the principal's credentials file (`<data_dir>/credentials/
nats-<user>.json`, mode 0600, folder 0700) and reach the server config bcrypt-hashed. A credentials file is kept
across restarts, so a process that reconnects after a NATS restart still gets in.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from domain.contract import (DLQ_PREFIX, REPORT_SUBJECT, RUNNER_HELLO, SUBJECT_PREFIX, TELEMETRY_LOGS, TELEMETRY_METRICS, TELEMETRY_PREDICTIONS,
                             WORK_READY, event_subject)

SERVICE, INFERENCE, SUBSCRIBER = "service", "inference", "subscriber"
CREDENTIALS_DIR = "credentials"
_EVENTS, _WORK = "TRAINYARD_EVENTS", "TRAINYARD_WORK"  # infra/messaging.py's stream names (it imports us)
_TELEMETRY, _STORING = "TRAINYARD_TELEMETRY", ("clickhouse-metrics", "clickhouse-logs")  # and its telemetry consumers
_STUDY_DRIVER = "study-driver"  # the service's own consumer on the events stream


def runner_user(index: int) -> str:
    return f"runner-{index}"


@dataclass(frozen=True)
class NatsCredentials:
    """How one process logs in to NATS. `inbox_prefix`: where its replies come (its user may subscribe only there)."""

    user: str
    password: str
    inbox_prefix: str | None = None

    @classmethod
    def read(cls, path: Path) -> NatsCredentials:
        data = json.loads(Path(path).read_text())
        return cls(user=data["user"], password=data["password"], inbox_prefix=data.get("inbox_prefix"))


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


def inbox(user: str) -> str | None:
    return None if user == SERVICE else f"_INBOX.{user}"


# Never for anyone but the service: removing what the service owns stops the whole pipeline.
_ADMIN_DENY = ("$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
               "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.CONSUMER.DELETE.>")


def permissions(user: str) -> Permissions | None:
    """The subject permissions of `user`; None for the service (no limits)."""
    if user == SERVICE:
        return None
    if user == SUBSCRIBER:
        return Permissions(publish_deny=(">",), subscribe_allow=(f"{SUBJECT_PREFIX}.>",),
                           subscribe_deny=(f"{SUBJECT_PREFIX}.telemetry.>", f"{DLQ_PREFIX}.>"))
    replies = f"{inbox(user)}.>"
    if user == INFERENCE:
        return Permissions(
            publish_allow=(TELEMETRY_PREDICTIONS, f"{DLQ_PREFIX}.deployment.>", f"{DLQ_PREFIX}.api_key.>",
                           f"$JS.API.STREAM.INFO.{_EVENTS}", "$JS.API.STREAM.INFO.TRAINYARD_TELEMETRY",
                           f"$JS.API.CONSUMER.DURABLE.CREATE.{_EVENTS}.*", f"$JS.API.CONSUMER.CREATE.{_EVENTS}.*",
                           f"$JS.API.CONSUMER.INFO.{_EVENTS}.*", f"$JS.API.CONSUMER.MSG.NEXT.{_EVENTS}.*",
                           f"$JS.ACK.{_EVENTS}.>"),
            publish_deny=(*_ADMIN_DENY, f"$JS.API.CONSUMER.DURABLE.CREATE.{_EVENTS}.{_STUDY_DRIVER}",
                          f"$JS.API.CONSUMER.CREATE.{_EVENTS}.{_STUDY_DRIVER}",
                          f"$JS.API.CONSUMER.MSG.NEXT.{_EVENTS}.{_STUDY_DRIVER}",
                          f"$JS.ACK.{_EVENTS}.{_STUDY_DRIVER}.>"),
            subscribe_allow=(replies,))
    if user.startswith("runner-"):
        return Permissions(
            publish_allow=(REPORT_SUBJECT, RUNNER_HELLO, TELEMETRY_METRICS, TELEMETRY_LOGS, f"{DLQ_PREFIX}.work.>",
                           f"$JS.API.CONSUMER.INFO.{_WORK}.*", f"$JS.API.CONSUMER.MSG.NEXT.{_WORK}.*",
                           # whether its last telemetry is stored before it reports a job's end (read-only)
                           *(f"$JS.API.CONSUMER.INFO.{_TELEMETRY}.{c}" for c in _STORING),
                           f"$JS.ACK.{_WORK}.>"),
            publish_deny=_ADMIN_DENY,
            subscribe_allow=(replies, WORK_READY, event_subject("training_job", "cancel_requested")))
    raise ValueError(f"unknown NATS principal {user!r}")


def principals(runners: int) -> list[str]:
    return [SERVICE, *(runner_user(i) for i in range(runners)), INFERENCE, SUBSCRIBER]


def credentials_path(data_dir: Path, user: str) -> Path:
    return Path(data_dir).absolute() / CREDENTIALS_DIR / f"nats-{user}.json"


def private_write(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner only from the first byte (0600, folder 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def ensure_credentials(data_dir: Path, users: list[str]) -> dict[str, NatsCredentials]:
    """Each user's credentials, from its file, made (with a new password) where missing."""
    out: dict[str, NatsCredentials] = {}
    for user in users:
        path = credentials_path(data_dir, user)
        try:
            creds = NatsCredentials.read(path)
        except (OSError, ValueError, KeyError):
            creds = NatsCredentials(user, secrets.token_urlsafe(32), inbox(user))
            private_write(path, json.dumps({"user": creds.user, "password": creds.password,
                                            "inbox_prefix": creds.inbox_prefix}, indent=2) + "\n")
        out[user] = creds
    return out


def _rule(kind: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> list[str]:
    lines = [f"        {kind}: {{"]
    for name, subjects in (("allow", allow), ("deny", deny)):
        if subjects:
            lines += [f"          {name}: ["] + [f"            {json.dumps(s)}" for s in subjects] + ["          ]"]
    return lines + ["        }"]


def authorization_block(creds: dict[str, NatsCredentials], hashed: bool = True) -> str:
    """nats-server's `authorization { users = [...] }` for these users (`hashed`: bcrypt passwords, as written to
    the embedded server's config; False gives `<user password>` placeholders, as in docs/architecture.md)."""
    lines = ["authorization {", "  users = ["]
    for user, c in creds.items():
        password = (bcrypt.hashpw(c.password.encode(), bcrypt.gensalt(rounds=10)).decode() if hashed
                    else f"<{user} password>")
        lines += ["    {", f"      user: {json.dumps(user)}", f"      password: {json.dumps(password)}"]
        perms = permissions(user)
        if perms is not None:
            lines += ["      permissions: {", *_rule("publish", perms.publish_allow, perms.publish_deny),
                      *_rule("subscribe", perms.subscribe_allow, perms.subscribe_deny), "      }"]
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
