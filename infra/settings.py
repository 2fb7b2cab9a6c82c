"""Settings from the environment: one place, read once at the edge (bootstrap, CLI)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where Trainyard's parts live. Unset URLs mean "use the embedded engine" (see infra/embedded.py)."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    database_url: str | None = None  # postgresql://user:pass@host:port/dbname
    nats_url: str | None = None  # nats://host:port
    clickhouse_url: str | None = None  # http://user:pass@host:8123/db ; unset: chDB at <data_dir>/chdb
    data_dir: Path = Path(".trainyard")
    artifact_dir: Path | None = None  # default <data_dir>/artifacts
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    runners: int = 2
    # Work distribution (runners/): how long JetStream waits for an ack before redelivering,
    # and how many deliveries a job gets before it is dead-lettered.
    runner_ack_wait_s: float = Field(default=30.0, gt=0)
    runner_max_deliver: int = Field(default=5, ge=1)
    # Relay: JetStream dedup window; hours so a relay restart never publishes twice.
    dedup_window_s: float = 6 * 3600

    def require_urls(self) -> tuple[str, str]:
        """(database_url, nats_url) for processes that need servers running; `trainyard up` sets both."""
        if not self.database_url or not self.nats_url:
            raise RuntimeError("TRAINYARD_DATABASE_URL and TRAINYARD_NATS_URL must be set "
                               "(`trainyard up` sets them, starting embedded engines where unset)")
        return self.database_url, self.nats_url

    @property
    def chdb_path(self) -> Path:
        return self.data_dir / "chdb"

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or (self.data_dir / "artifacts")
