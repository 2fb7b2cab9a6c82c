"""The report handler answers a report once the aggregate has decided; the live-lease bookkeeping that follows is
a cache: when it fails, the answer stands, the stage shows the failure and the next heartbeat makes the lease row
again (real PostgreSQL)."""
from __future__ import annotations

from uuid import UUID

import pytest

from infra.leases import LeaseStore
from commands.reports import ReportHandler
from commands.training import SubmitJob, TrainingApplication
from domain.contract import ReportReply, RunnerReport
from infra.health import Stage
from infra.postgres import eventsourcing_env

pytestmark = pytest.mark.integration
TOKEN = "a-lease-token-of-24-chars"


def report(handler: ReportHandler, kind: str, job_id: UUID, answered: list[ReportReply] | None = None,
           **fields) -> ReportReply:
    body = RunnerReport(type=kind, job_id=job_id, lease=TOKEN, runner_id="h:1", report_id=f"{kind}-1", **fields)
    return handler.handle(body.model_dump_json().encode(), answered.append if answered is not None else None)


def test_a_claim_stands_when_its_lease_row_cannot_be_written_and_the_next_beat_makes_it(database_url: str) -> None:
    app = TrainingApplication(env=eventsourcing_env(database_url))
    broken, working = LeaseStore(database_url, 30.0), LeaseStore(database_url, 30.0)
    broken.close()  # its pool is closed: every write fails
    try:
        job_id = app.submit_job(SubmitJob(project="default", name="l", framework="lightgbm", task="regression",
                                          dataset={"uri": "builtin://diabetes"})).job_id
        stage = Stage("reports")
        answered: list[ReportReply] = []
        claimed = report(ReportHandler(app, broken, stage), "claim", job_id, answered)
        assert claimed.ok and claimed.status == "running" and claimed.attempt == 1
        assert answered == [claimed]  # the runner had its answer before the bookkeeping ran
        assert app.get_job(job_id).status == "running"
        assert stage.last_error  # /readyz shows the lease store failing
        with working.pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM job_leases WHERE job_id = %s", (job_id,)).fetchone()[0] == 0

        beat = report(ReportHandler(app, working), "heartbeat", job_id, current_step=3, total_steps=10)
        assert beat.ok and not beat.cancel_requested
        with working.pool.connection() as conn:
            row = conn.execute("SELECT runner_id, attempt FROM job_leases WHERE job_id = %s", (job_id,)).fetchone()
        assert row == ("h:1", 1)
    finally:
        working.close()
        app.close()
