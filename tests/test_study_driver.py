"""The study driver hears about a trial's job from the report handler, not only from JetStream (real PostgreSQL
and NATS; no relay runs here, so no job event ever reaches the driver's consumer)."""
from __future__ import annotations

import asyncio
from uuid import UUID

import nats
import pytest

from infra.leases import LeaseStore
from commands.reports import ReportHandler
from commands.studies import CreateStudy
from commands.study_driver import StudyDriver
from commands.training import TrainingApplication
from domain.contract import RunnerReport
from entrypoints.bootstrap import follow_events
from infra.messaging import EVENTS_STREAM, ensure_streams
from infra.postgres import eventsourcing_env, pool as pg_pool
from infra.settings import Settings
from projections.studies import STUDIES_DDL, StudyQueries
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def test_a_trials_reports_move_its_study_without_waiting_for_the_events_trip(database_url: str, nats_url: str) -> None:
    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool, leases = pg_pool(database_url), LeaseStore(database_url, 30.0)
    with pool.connection() as conn:
        conn.execute(STUDIES_DDL)
    driver = StudyDriver(app, StudyQueries(pool), refresh_s=3600.0)  # no periodic refresh after the first
    handler = ReportHandler(app, leases, studies=driver)
    study_id = driver.studies.create(CreateStudy(
        project="default", name="nudged", framework="lightgbm", task="binary_classification",
        dataset={"uri": "builtin://breast_cancer"}, objective={"metric": "auc", "direction": "maximize"},
        search_space={"num_leaves": {"type": "int", "low": 4, "high": 64}}, n_trials=2, max_parallel=1)).study_id

    def report(kind: str, job_id: UUID, **fields) -> None:
        body = RunnerReport(type=kind, job_id=job_id, lease="a-lease-token-of-24-chars", runner_id="h:1",
                            report_id=f"{kind}-{job_id.hex[:8]}", **fields)
        assert handler.handle(body.model_dump_json().encode()).ok

    def wait_for(predicate, what: str) -> None:
        eventually(lambda: predicate(driver.studies.get(study_id)), timeout=10, interval=0.02, message=what)

    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, Settings())
        await js.purge_stream(EVENTS_STREAM)  # nothing of earlier tests for the driver's consumer
        stop = asyncio.Event()
        running = asyncio.create_task(driver.run(follow_events(js, driver, stop)))
        try:
            await asyncio.to_thread(driver.sync, study_id)  # what the study's `created` event does: ask trial 0
            assert driver.studies.get(study_id).next_number == 1
            job_id = UUID(str(driver.studies.get(study_id).trial(0).job_id))
            await asyncio.to_thread(report, "claim", job_id)
            await asyncio.to_thread(report, "completed", job_id, final_metrics={"auc": 0.97},
                                    artifact={"uri": "file:///m.txt"})
            await asyncio.to_thread(wait_for, lambda s: s.next_number == 2 and s.trial(0).value == 0.97,
                                    "trial 0 recorded and trial 1 asked right after the completed report")
            # the job's own events, when they come through JetStream, need no second sync; a newer one does
            version = app.get_job(job_id).version
            completed = {"aggregate": "training_job", "type": "training_job.completed", "aggregate_id": str(job_id)}
            assert driver.study_of({**completed, "aggregate_version": version}) is None
            assert driver.study_of({**completed, "aggregate_version": version + 1}) == study_id
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await nc.close()

    try:
        asyncio.run(scenario())
    finally:
        leases.close()
        pool.close()
        app.close()


def test_an_ask_and_its_job_are_saved_together_or_not_at_all(database_url: str) -> None:
    """The driver records an ask with the trial's job in one transaction: when the job cannot be saved (here a job
    with the trial's id is already in the store) the ask is not recorded either; when it can, both are there."""
    from eventsourcing.persistence import RecordConflictError

    from commands.studies import trial_job_id
    from commands.training import SubmitJob

    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool = pg_pool(database_url)
    try:
        with pool.connection() as conn:
            conn.execute(STUDIES_DDL)
        driver = StudyDriver(app, StudyQueries(pool), refresh_s=3600.0)
        spec = dict(framework="lightgbm", task="binary_classification", dataset={"uri": "builtin://breast_cancer"},
                    objective={"metric": "auc", "direction": "maximize"},
                    search_space={"num_leaves": {"type": "int", "low": 4, "high": 64}}, n_trials=3, max_parallel=1)
        blocked = driver.studies.create(CreateStudy(project="default", name="blocked", **spec)).study_id
        app.submit_job(SubmitJob(project="default", name="squatter", framework="lightgbm", task="regression",
                                 dataset={"uri": "builtin://diabetes"}), f"study:{blocked}:trial:0")
        with pytest.raises(RecordConflictError):
            driver.sync(blocked)
        assert driver.studies.get(blocked).next_number == 0  # no ask without its job
        fine = driver.studies.create(CreateStudy(project="default", name="fine", **spec)).study_id
        study = driver.sync(fine)
        job = app.get_job(trial_job_id(fine, 0, project="default"))
        assert study.next_number == 1 and job.study_id == fine and job.trial_number == 0
        assert job.params["num_leaves"] == study.trial(0).params["num_leaves"] and job.status == "queued"
    finally:
        pool.close()
        app.close()


def test_a_studys_trials_are_jobs_of_its_project_and_only_that_project_may_cancel_it(database_url: str) -> None:
    from commands.studies import StudyNotFoundError, trial_job_id
    from commands.training import JobNotFoundError

    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool = pg_pool(database_url)
    try:
        with pool.connection() as conn:
            conn.execute(STUDIES_DDL)
        driver = StudyDriver(app, StudyQueries(pool), refresh_s=3600.0)
        study_id = driver.studies.create(CreateStudy(
            project="alpha", name="tenant", framework="lightgbm", task="binary_classification",
            dataset={"uri": "builtin://breast_cancer"}, objective={"metric": "auc", "direction": "maximize"},
            search_space={"num_leaves": {"type": "int", "low": 4, "high": 64}}, n_trials=3,
            max_parallel=2)).study_id
        study = driver.sync(study_id)
        jobs = [app.get_job(study.trial(n).job_id) for n in (0, 1)]
        assert [j.project for j in jobs] == ["alpha", "alpha"] and jobs[0].study_id == study_id
        assert jobs[0].id == trial_job_id(study_id, 0, project="alpha") != trial_job_id(study_id, 0, project="beta")
        # another project cannot cancel the study or its trials' jobs: they are as missing as unknown ids
        with pytest.raises(StudyNotFoundError):
            driver.studies.request_cancel(study_id, project="beta")
        with pytest.raises(JobNotFoundError):
            app.request_cancel(jobs[0].id, project="beta")
        # its own project can, and the driver cancels the trials' jobs (in the study's project)
        driver.studies.request_cancel(study_id, project="alpha")
        driver.sync(study_id)
        assert [app.get_job(j.id).status for j in jobs] == ["cancelled", "cancelled"]
        assert driver.sync(study_id).status == "cancelled"
    finally:
        pool.close()
        app.close()
