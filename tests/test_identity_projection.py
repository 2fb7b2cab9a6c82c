"""The identity read model on real PostgreSQL: for any sequence of identity commands, processing each event twice
changes nothing, a rebuild from position zero equals the live tables, and what the request path reads (the cache)
says what the aggregates say (property test)."""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings, strategies as st

from commands.context import CommandContext
from commands.credentials import new_api_token
from commands.training import TrainingApplication
from domain.identity import ApiToken, IdentityError, Project, Session, User
from infra.postgres import eventsourcing_env, pool as make_pool
from projections.identity import IdentityCache, IdentityProjection, IdentityQueries, IdentityView
from tests.support.database import create_database, drop_database

pytestmark = pytest.mark.integration
TABLES = ("principals", "projects", "memberships", "api_tokens", "sessions")


def make(url: str) -> Any:
    env = Environment("identity", eventsourcing_env(url))
    return InfrastructureFactory.construct(env=env).tracking_recorder(IdentityView)


@pytest.fixture(scope="module")
def store(postgres_server: str) -> Iterator[SimpleNamespace]:
    url, replica_url = create_database(postgres_server), create_database(postgres_server)
    app = TrainingApplication(env=eventsourcing_env(url))
    live, replica = IdentityProjection(view=make(url)), IdentityProjection(view=make(replica_url))
    pool = make_pool(url, max_size=2)
    yield SimpleNamespace(app=app, url=url, replica_url=replica_url, live=live, replica=replica, pool=pool)
    pool.close()
    for p in (live, replica):
        p.view.datastore.close()
    app.close()
    drop_database(postgres_server, url)
    drop_database(postgres_server, replica_url)


def rows(url: str) -> list[list[tuple]]:
    with psycopg.connect(url) as conn:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES]


def project(store: SimpleNamespace, projection: Any, twice: bool = False) -> None:
    for n in store.app.recorder.select_notifications(start=1, limit=100_000):
        if n.topic in projection.topics:
            e, t = store.app.mapper.to_domain_event(n), Tracking(store.app.name, n.id)
            projection.process_event(e, t)
            if twice:
                projection.process_event(e, t)


USERS = ["ann", "bob", "cy"]
command = st.one_of(
    st.tuples(st.just("member"), st.sampled_from(USERS), st.sampled_from(["viewer", "engineer", "deployer", "admin"])),
    st.tuples(st.just("remove"), st.sampled_from(USERS)),
    st.tuples(st.just("quotas"), st.dictionaries(st.sampled_from(["max_running_jobs", "upload_bytes"]),
                                                 st.integers(0, 10), max_size=2)),
    st.tuples(st.just("token"), st.sampled_from(USERS), st.booleans()),
    st.tuples(st.just("disable"), st.sampled_from(USERS)),
    st.tuples(st.just("session"), st.sampled_from(USERS), st.booleans()),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(command, max_size=15))
def test_identity_replays_to_the_live_tables_and_the_cache_says_what_the_aggregates_say(store, cmds: list) -> None:
    suffix = uuid4().hex[:6]
    ctx = CommandContext(actor="tester")
    users = {u: User.create(f"{u}-{suffix}", "$argon2id$not-a-real-hash") for u in USERS}
    p = Project.create(f"p-{suffix}")
    store.app.save_with(ctx, p, *users.values())
    tokens: list[ApiToken] = []
    for cmd in cmds:
        changed: list[Any] = []
        try:
            if cmd[0] == "member":
                p.set_member(users[cmd[1]].name, cmd[2], "because")
                changed = [p]
            elif cmd[0] == "remove":
                p.remove_member(users[cmd[1]].name, "gone")
                changed = [p]
            elif cmd[0] == "quotas":
                p.set_quotas(cmd[1], "budget")
                changed = [p]
            elif cmd[0] == "token":
                _, token_hash, prefix = new_api_token()
                t = ApiToken.create(users[cmd[1]].name, "t", token_hash, prefix, ["*.read"], None)
                if cmd[2]:
                    t.revoke("leaked")
                tokens.append(t)
                changed = [t]
            elif cmd[0] == "disable":
                users[cmd[1]].disable("left")
                changed = [users[cmd[1]]]
            else:
                s = Session.start(users[cmd[1]].name, "0" * 64, 1e12)
                if cmd[2]:
                    s.end("logout")
                changed = [s]
        except IdentityError:
            continue  # refused: nothing recorded
        store.app.save_with(ctx, *changed)
    project(store, store.live, twice=True)
    live = rows(store.url)
    project(store, store.live)
    assert rows(store.url) == live
    project(store, store.replica)
    assert rows(store.replica_url) == live
    cache = IdentityCache(IdentityQueries(store.pool))
    for u in users.values():
        principal = cache.principal(u.name)
        assert principal is not None and principal.disabled == u.disabled
        assert principal.memberships == ({p.name: p.members[u.name]} if u.name in p.members else {})
    assert cache.project(p.name)["quotas"] == p.quotas
    for t in tokens:
        assert cache.token(t.token_hash).revoked == t.revoked
