"""Throwaway PostgreSQL databases: one per test, module or stack, on the session's server."""
from __future__ import annotations

from infra import postgres as pg


def create_database(server_url: str) -> str:
    """A new, empty database on `server_url`; returns its URL."""
    return pg.create_database(server_url, "trainyard_test")


drop_database = pg.drop_database
