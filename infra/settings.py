"""Settings from the environment: one place, read once at the edge (bootstrap, CLI)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where Trainyard's parts live. Unset URLs mean "use the embedded engine" (see infra/embedded.py)."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    database_url: str | None = None  # postgresql://user:pass@host:port/dbname
    nats_url: str | None = None  # nats://host:port
    # NATS login (infra/nats_accounts.py): a credentials file {"user", "password", "inbox_prefix"} as `trainyard up`
    # writes one per process kind, or a user and password; none of them: connect without credentials.
    nats_creds: Path | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    # The embedded nats-server's monitoring endpoint (lists every client): off unless set; 127.0.0.1 only.
    nats_monitor_port: int | None = Field(default=None, ge=1, le=65535)
    clickhouse_url: str | None = None  # http://user:pass@host:8123/db ; unset: chDB at <data_dir>/chdb
    data_dir: Path = Path(".trainyard")
    artifact_dir: Path | None = None  # default <data_dir>/artifacts
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    inference_port: int = 8001  # `trainyard serve-inference` (the host is api_host)
    policy_interval_s: float = Field(default=5.0, gt=0)  # how often deployment policies are evaluated
    # Tests only: "deployment/variant=ms,…" makes the inference server answer those variants that much later.
    inference_test_delay: str | None = None
    runners: int = 2
    # Leases (infra/leases.py): a runner heartbeats every lease_ttl_s / 5; a lease silent for lease_ttl_s is
    # lost and the reconciler (every reconcile_interval_s) requeues its job or fails it per its max_attempts.
    lease_ttl_s: float = Field(default=15.0, gt=0)
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    # Schedules (commands/scheduler.py): a scheduled time older than the grace when a scheduler first sees it was
    # missed (downtime) and follows its catch-up policy; the clock is infra/clock.py's (empty: the system's).
    scheduler_grace_s: float = Field(default=60.0, gt=0)
    scheduler_clock: str = ""
    # Checkpoints of training jobs (runners/checkpoints.py, in <artifacts>/checkpoints): a trainer saves one at the
    # end of an epoch or boosting round once this many steps or seconds have passed since its last; a job keeps its
    # last `checkpoint_keep`. A lost or handed-back job's next attempt resumes from its latest.
    checkpoint_every_steps: int = Field(default=25, ge=1)
    checkpoint_every_s: float = Field(default=60.0, gt=0)
    checkpoint_keep: int = Field(default=2, ge=1, le=100)
    # A queued job whose work item has not been seen on the work stream for this long gets a new one.
    requeue_after_s: float = Field(default=30.0, gt=0)
    # A stage with work waiting and no progress for this long is `stuck` (/readyz answers 503).
    stuck_after_s: float = Field(default=30.0, gt=0)
    # Relay: JetStream dedup window; hours so a relay restart never publishes twice.
    dedup_window_s: float = 6 * 3600
    # Input bounds (api/limits.py, infra/dataset_files.py). Dataset roots: os.pathsep-separated absolute paths
    # that file:// datasets must lie in (default <data_dir>/datasets; uploads go to <first root>/uploads).
    dataset_roots: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # any request body but an upload
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # POST /api/v1/datasets
    # Code bundles (infra/code_bundles.py, POST /api/v1/code): stored in <code_dir>/<project>/ (default
    # <data_dir>/code); the archive as uploaded, its members (files, links, folders) and its bytes once unpacked.
    code_dir: Path | None = None
    max_code_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    max_code_files: int = Field(default=10_000, ge=1)
    max_code_unpacked_bytes: int = Field(default=1024**3, ge=1024)
    # What a runner takes (TRAINYARD_RUNNER_ACCEPTS): "all" (built-in trainers, exports and code jobs) or "builtin"
    # (never a job that runs the user's code: such a runner does not read the code work consumers).
    runner_accepts: Literal["all", "builtin"] = "all"
    # What a runner has (runners/capabilities.py): measured on its machine (CPUs it may use, MemTotal, CUDA devices
    # through torch) unless these say otherwise (TRAINYARD_RUNNER_GPUS=0 keeps a GPU machine's runner off GPU work).
    runner_cpus: int | None = Field(default=None, ge=1, le=1_000_000)
    runner_memory_mb: int | None = Field(default=None, ge=1, le=2**40)
    runner_gpus: int | None = Field(default=None, ge=0, le=1024)
    runner_gpu_model: str | None = Field(default=None, max_length=200)
    # A runner says what it has every runner_hello_s (infra/runner_registry.py keeps it). A job that needs more than
    # every runner seen within runner_seen_window_s is a 422 at submit once the service has watched that long;
    # before that, or while a fitting runner is only busy, it waits in the queue (`waiting_for`).
    runner_hello_s: float = Field(default=10.0, gt=0)
    runner_seen_window_s: float = Field(default=600.0, gt=0)
    # Identity (api/auth.py): access tokens are JWTs signed with this secret (unset: a random one kept in
    # <data_dir>/jwt-secret, mode 0600, shared by the processes of one data dir) and live this long.
    jwt_secret: str | None = Field(default=None, min_length=32)
    access_token_ttl_s: float = Field(default=900.0, ge=60, le=86400)
    # An external OpenID Connect issuer (optional): its RS256/ES256 tokens are accepted for the Trainyard user named
    # by `oidc_user_claim` (sub, email — its part before @ —, preferred_username), keys from `oidc_jwks_url`.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str = "trainyard"
    oidc_user_claim: str = "sub"
    # The HTTP edge of both servers (infra/http_edge.py, entrypoints/http_server.py). Host names the servers answer
    # to, comma-separated ("*" any, "*.example.com" its subdomains); unset: the loopback names plus api_host.
    allowed_hosts: str | None = None
    http_max_header_bytes: int = Field(default=64 * 1024, ge=4096)  # request line + headers of one request
    http_header_timeout_s: float = Field(default=10.0, gt=0)  # from a request's first byte to its last header
    http_body_timeout_s: float = Field(default=300.0, gt=0)  # from the last header to the body's last byte
    http_max_connections: int = Field(default=1000, ge=1)  # open connections; past it a request gets a 503
    # Live streams (SSE, WebSocket) open at once in one API process; past it a 503 with Retry-After. Below
    # http_max_connections, so streams can never take every connection from ordinary requests.
    max_live_streams: int = Field(default=800, ge=1)

    def require_urls(self) -> tuple[str, str]:
        """(database_url, nats_url) for processes that need servers running; `trainyard up` sets both."""
        if not self.database_url or not self.nats_url:
            raise RuntimeError("TRAINYARD_DATABASE_URL and TRAINYARD_NATS_URL must be set "
                               "(`trainyard up` sets them, starting embedded engines where unset)")
        return self.database_url, self.nats_url

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        """The Host names both servers accept (lower case; bracketed and bare forms of IPv6 literals)."""
        if self.allowed_hosts is not None:
            names = [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
        else:
            names = ["localhost", "127.0.0.1", "::1", "[::1]"]
            if self.api_host not in ("0.0.0.0", "::", ""):  # binding every address names no host
                names.append(self.api_host.lower())
        out: list[str] = []
        for name in names:
            bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
            forms = [name] + ([bare, f"[{bare}]"] if ":" in bare else [])
            out.extend(f for f in forms if f not in out)
        return tuple(out)

    @property
    def chdb_path(self) -> Path:
        return self.data_dir / "chdb"

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or (self.data_dir / "artifacts")

    @property
    def code_root(self) -> Path:
        return self.code_dir or (self.data_dir / "code")

    @property
    def dataset_root_paths(self) -> tuple[Path, ...]:
        """The roots file:// datasets must lie in (not resolved: readers resolve them and the files)."""
        if not self.dataset_roots:
            return (self.data_dir / "datasets",)
        return tuple(Path(p) for p in self.dataset_roots.split(os.pathsep) if p.strip())

    # JetStream limits (infra/messaging.py ensure_streams): anyone on the bus can publish, so no stream may grow
    # without bound. A full stream drops its oldest messages (PostgreSQL stays the source of truth; the relay can
    # publish again); the work stream refuses new items instead (the reconciler requeues them later).
    events_stream_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    telemetry_stream_max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    work_stream_max_bytes: int = Field(default=256 * 1024**2, ge=1024 * 1024)
    dlq_max_bytes: int = Field(default=64 * 1024**2, ge=1024 * 1024)
    dlq_max_msg_bytes: int = Field(default=1024 * 1024 + 4096, ge=1024)  # a dead letter: one message + the reason
    # ClickHouse retention (infra.clickhouse.apply_retention, applied at every start), in days; 0: forever.
    metric_retention_days: int = Field(default=0, ge=0, le=36_500)  # metric points and their rollup
    prediction_retention_days: int = Field(default=90, ge=0, le=36_500)  # predictions, feedback, label effects
    log_retention_days: int = Field(default=30, ge=0, le=36_500)  # job log lines
    # How often serve checks that the streams and consumers it owns exist (and recreates what vanished).
    stream_check_s: float = Field(default=2.0, gt=0)
