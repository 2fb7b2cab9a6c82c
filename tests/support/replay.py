"""Replay an event store into the PostgreSQL read models, in this process, until each has caught up."""
from __future__ import annotations

from typing import Any

from eventsourcing.projection import ProjectionRunner

from infra.postgres import eventsourcing_env
from tests.support.waiting import eventually


def _head(runner: Any, projection_class: type) -> int:
    topics = list(projection_class.topics)
    recorder = runner.app.recorder
    if not topics:
        return recorder.max_notification_id() or 0
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(f'SELECT max((SELECT max(notification_id) FROM "{recorder.events_table_name}" WHERE topic = t)) '
                     "FROM unnest(%s::text[]) AS t", (topics,))
        return curs.fetchone()["max"] or 0


def project_all(database_url: str, read_models: list[tuple[type, type, type]] | None = None,
                timeout_s: float = 60) -> None:
    """Run each (application, projection, view) of `read_models` (default: every read model serve runs) over the
    database's events and return once each has processed the newest event of its topics."""
    if read_models is None:
        from tests.support.read_models import read_models as all_read_models
        read_models = all_read_models()
    for application_class, projection_class, view_class in read_models:
        with ProjectionRunner(application_class=application_class, projection_class=projection_class,
                              view_class=view_class, env=eventsourcing_env(database_url)) as runner:
            head = _head(runner, projection_class)

            def caught_up() -> bool:
                if (runner.view.max_tracking_id(runner.app.name) or 0) >= head:
                    return True
                if runner.is_interrupted.is_set():
                    raise AssertionError(f"{projection_class.__name__} stopped: {runner._thread_error!r}")
                return False

            eventually(caught_up, timeout=timeout_s, interval=0.05,
                       message=f"{projection_class.__name__} never caught up")
