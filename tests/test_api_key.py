"""API keys: only a digest of the key is kept, scopes allow what they name, revocation happens once, and invalid
input names its field."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from domain.api_key import (ApiKey, ApiKeyError, ApiKeyRevokedError, ApiKeySpecError, allows, hash_key, key_matches,
                            key_prefix, new_key)
from domain.contract import envelope

deployment_names = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z")


def make(deployments: list[str] | str = ("fraud",), rate: float | None = 50.0) -> tuple[str, ApiKey]:
    key = new_key()
    return key, ApiKey.create("ci pipeline", hash_key(key), key_prefix(key), deployments, rate, project="default")  # type: ignore[arg-type]


def test_the_key_itself_is_never_kept() -> None:
    key, api_key = make()
    assert key.startswith("ty_") and len(key) >= 40 and new_key() != key
    assert api_key.key_hash == hash_key(key) != key and len(api_key.key_hash) == 64
    assert api_key.prefix == key[:10] and key_matches(key, api_key.key_hash) and not key_matches(key + "x", api_key.key_hash)
    for e in api_key.collect_events():
        assert key not in repr(e.__dict__)
        assert envelope(e)[0] == "trainyard.v1.api_key.created"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_a_hash_never_equals_its_key(key: str) -> None:
    assert hash_key(key) != key and hash_key(key) == hash_key(key) and len(hash_key(key)) == 64


@settings(max_examples=150, deadline=None)
@given(st.lists(deployment_names, min_size=1, max_size=5), deployment_names, st.booleans())
def test_allows_exactly_the_named_deployments_or_all(names: list[str], name: str, star: bool) -> None:
    scope = [*names, "*"] if star else names
    assert allows(scope, name) == (star or name in names)
    assert allows("*", name) and allows(["*"], name)
    _, api_key = make(scope)
    assert api_key.deployments == (["*"] if star else list(dict.fromkeys(names)))
    assert api_key.allows(name) == (star or name in names)


def test_revoking_twice_is_refused() -> None:
    _, api_key = make("*")
    assert api_key.deployments == ["*"] and api_key.allows("anything")
    api_key.revoke("leaked in a log")
    assert api_key.revoked and api_key.revoked_reason == "leaked in a log" and not api_key.allows("anything")
    with pytest.raises(ApiKeyRevokedError) as caught:
        api_key.revoke("again")
    assert isinstance(caught.value, ApiKeyError)
    events = api_key.collect_events()
    assert [envelope(e)[0] for e in events] == ["trainyard.v1.api_key.created", "trainyard.v1.api_key.revoked"]
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == api_key.__dict__


GOOD_HASH = hash_key("ty_x")


@pytest.mark.parametrize("kwargs, field", [
    ({"name": ""}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "bad\x00name"}, "name"),
    ({"deployments": []}, "deployments"),
    ({"deployments": "fraud"}, "deployments"),
    ({"deployments": [f"d{i}" for i in range(101)]}, "deployments"),
    ({"deployments": ["fraud", "Fraud"]}, "deployments[1]"),
    ({"deployments": ["fraud", "-x"]}, "deployments[1]"),
    ({"deployments": [None]}, "deployments[0]"),
    ({"rate_limit_per_s": 0}, "rate_limit_per_s"),
    ({"rate_limit_per_s": -1.0}, "rate_limit_per_s"),
    ({"rate_limit_per_s": 100_000.5}, "rate_limit_per_s"),
    ({"rate_limit_per_s": math.inf}, "rate_limit_per_s"),
    ({"rate_limit_per_s": math.nan}, "rate_limit_per_s"),
    ({"rate_limit_per_s": True}, "rate_limit_per_s"),
    ({"rate_limit_per_s": "10"}, "rate_limit_per_s"),
    ({"key_hash": "not-a-digest"}, "key_hash"),
    ({"prefix": ""}, "prefix"),
])
def test_invalid_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {"name": "ci", "key_hash": GOOD_HASH, "prefix": "ty_x", "deployments": ["fraud"],
            "rate_limit_per_s": None, "project": "default", **kwargs}
    with pytest.raises(ApiKeySpecError) as caught:
        ApiKey.create(**args)
    assert caught.value.field == field and isinstance(caught.value, ValueError)


def test_valid_limits_and_reasons() -> None:
    for rate in (None, 0.001, 1, 100_000):
        _, api_key = make(["fraud", "fraud", "*"], rate)
        assert api_key.rate_limit_per_s == (None if rate is None else float(rate)) and api_key.deployments == ["*"]
    _, api_key = make([f"d{i}" for i in range(100)], None)
    assert len(api_key.deployments) == 100
    with pytest.raises(ApiKeySpecError) as caught:
        api_key.revoke("x" * 501)
    assert caught.value.field == "reason" and not api_key.revoked
    api_key.revoke(None)
    assert api_key.revoked and api_key.revoked_reason is None
