"""The Deployment aggregate: any sequence of commands keeps a legal state that follows a reference model, refused
commands change nothing and name what was wrong, and the events rebuild the same object."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from domain.contract import envelope
from domain.deployment import Deployment
from domain.deployment_spec import (CHANGES, DeploymentError, DeploymentInactiveError, DeploymentSpecError,
                                    NoPreviousRevisionError, Shadow, Variant, deployment_id)
from tests.support.strategies import (as_json, deployment_commands, run_deployment_command, shadows, variant,
                                      variant_lists)

STATE_KEYS = ("revision", "change", "reason", "variants", "shadow", "active", "rolled_back_to")

EVENT_OF_CHANGE = {"traffic": "TrafficChanged", "promote": "Promoted", "update": "Updated", "rollback": "RolledBack",
                   "deactivate": "Deactivated"}


def state(d: Deployment) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in d.__dict__.items() if k != "_pending_events"})


@settings(max_examples=150, deadline=None)
@given(variant_lists().filter(lambda vf: vf[1] is None), shadows.filter(lambda s: s[1] is None),
       st.lists(deployment_commands, min_size=5, max_size=30))
def test_any_command_sequence_follows_the_reference_model_and_replays_to_the_same_object(
        initial: tuple, shadow: tuple, cmds: list[tuple]) -> None:
    d = Deployment.create("fraud-scoring", initial[0], shadow[0], "first rollout", project="default")
    events = list(d.collect_events())
    model = [{"revision": 1, "change": "created", "reason": "first rollout", "variants": initial[0],
              "shadow": shadow[0], "active": True, "rolled_back_to": None}]
    for cmd in cmds:
        before = state(d)
        expect, error = run_deployment_command(d, cmd)
        new = d.collect_events()
        if isinstance(expect, dict):
            assert error is None, (cmd, error)
            model.append(expect)
            assert len(new) == 1 and new[0].originator_version == d.version == d.revision == expect["revision"]
            e = new[0]
            assert type(e).__name__ == EVENT_OF_CHANGE[expect["change"]]  # one past-tense event per action
            if isinstance(e, Deployment.Revision):  # the event carries the full new state
                assert (e.change_name, e.variants, e.shadow, e.reason, e.details()["rolled_back_to"]) == (
                    expect["change"], expect["variants"], expect["shadow"], expect["reason"], expect["rolled_back_to"])
            assert d.revisions[-1]["at"] == e.timestamp.isoformat()
        else:
            assert error is not None, (cmd, expect)
            if isinstance(expect, str):
                assert isinstance(error, DeploymentSpecError) and isinstance(error, ValueError)
                assert error.field == expect, (cmd, str(error))
            else:
                assert type(error) is expect and isinstance(error, DeploymentError)
            assert not new and state(d) == before  # refused: nothing changed
        events.extend(new)
        # the current revision is legal and is the model's last one
        assert [{k: r[k] for k in STATE_KEYS} for r in map(as_json, d.revisions)] == model
        assert [r["revision"] for r in d.revisions] == list(range(1, d.revision + 1))
        assert all(r["change"] in CHANGES for r in d.revisions)
        assert sum(v.weight for v in d.variants) == 100 and 1 <= len(d.variants) <= 10
        assert (d.variants, d.shadow) == (d.revisions[-1]["variants"], d.revisions[-1]["shadow"])
        assert d.active == model[-1]["active"]
        assert d.snapshot() == {"name": "fraud-scoring", "revision": d.revision, "active": d.active,
                                "variants": model[-1]["variants"], "shadow": model[-1]["shadow"]}
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == d.__dict__
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert [envelope(e)[0] for e in events] == [
        "trainyard.v1.deployment." + ("created" if r["change"] == "created" else
                                      "deactivated" if r["change"] == "deactivate" else "revised")
        for r in d.revisions]


# ---- examples -------------------------------------------------------------------------------------
def two_variants() -> Deployment:
    return Deployment.create("fraud", [variant("champion", 90), variant("challenger", 10, version=2)], project="default")


def test_rollback_restores_the_revision_before_the_current_one() -> None:
    d = two_variants()
    with pytest.raises(NoPreviousRevisionError):
        d.rollback("nothing to go back to")
    d.change_traffic({"champion": 50, "challenger": 50}, "ramp up")
    d.promote("challenger", "it wins")
    d.rollback("errors went up")
    assert d.revision == 4 and d.weights == {"champion": 50, "challenger": 50}
    assert d.revisions[-1]["change"] == "rollback" and d.revisions[-1]["rolled_back_to"] == 2
    d.rollback("back again")  # the revision before 4 is 3 (the promotion)
    assert d.revision == 5 and d.weights == {"champion": 0, "challenger": 100} and d.revisions[-1]["rolled_back_to"] == 3
    d.update([variant("champion", 100, version=3)], {"model": "fraud-nn", "version": 1, "artifact": {}}, "v3")
    d.rollback()
    assert d.weights == {"champion": 0, "challenger": 100} and d.shadow is None
    assert [r["change"] for r in d.revisions] == ["created", "traffic", "promote", "rollback", "rollback", "update",
                                                  "rollback"]


def test_a_deactivated_deployment_refuses_every_change() -> None:
    d = two_variants()
    d.deactivate("retired")
    assert not d.active and d.revision == 2 and d.revisions[-1]["change"] == "deactivate"
    assert d.revisions[-1]["variants"] == d.revisions[0]["variants"]
    for call in (lambda: d.change_traffic({"champion": 100, "challenger": 0}), lambda: d.promote("champion"),
                 lambda: d.update([variant("a", 100)]), lambda: d.rollback(), lambda: d.deactivate(),
                 lambda: d.change_traffic({"nope": 100}, reason="\x00")):
        with pytest.raises(DeploymentInactiveError):
            call()
    assert len(d.collect_events()) == 2


@pytest.mark.parametrize("name, variants, shadow, reason, field", [
    ("Fraud", [variant("a", 100)], None, None, "name"),
    ("-fraud", [variant("a", 100)], None, None, "name"),
    ("f" * 64, [variant("a", 100)], None, None, "name"),
    ("fraud", [], None, None, "variants"),
    ("fraud", [variant(f"v{i}", 10) for i in range(11)], None, None, "variants"),
    ("fraud", [variant("a", 60), variant("b", 60)], None, None, "variants"),
    ("fraud", [variant("a", 100), variant("a", 0)], None, None, "variants[1].name"),
    ("fraud", [variant("a", 50), variant("b", 50.0)], None, None, "variants[1].weight"),
    ("fraud", [variant("a", 100)], {"model": "m", "version": "1", "artifact": {}}, None, "shadow.version"),
    ("fraud", [variant("a", 100)], None, "x" * 501, "reason"),
])
def test_invalid_creation_names_the_field(name: str, variants: list, shadow: Any, reason: Any, field: str) -> None:
    with pytest.raises(DeploymentSpecError) as caught:
        Deployment.create(name, variants, shadow, reason, project="default")
    assert caught.value.field == field


def test_creation_derives_the_id_from_the_name_and_keeps_its_own_copies() -> None:
    variants = [variant("a", 100)]
    d = Deployment.create("fraud", variants, reason=None, project="default")
    assert d.id == deployment_id("fraud") != deployment_id("fraud-2") and d.revision == d.version == 1
    variants[0]["weight"] = 7
    variants[0]["artifact"]["uri"] = "changed"
    assert d.variants[0].weight == 100 and d.variants[0].artifact["uri"] != "changed"
    assert d.collect_events()[0].variants[0]["weight"] == 100
    snap = d.snapshot()
    snap["variants"][0]["weight"] = 3
    snap["variants"][0]["artifact"]["uri"] = "changed"
    assert d.variants[0].weight == 100 and d.variants[0].artifact["uri"] != "changed"


def test_traffic_and_promote_guards_name_the_field() -> None:
    d = two_variants()
    for weights, field in [({"champion": 50, "challenger": 40, "ghost": 10}, "weights.ghost"),
                           ({"champion": 100}, "weights.challenger"),
                           ({"champion": 101, "challenger": -1}, "weights.champion"),
                           ({"champion": 50, "challenger": 49}, "weights"),
                           ([("champion", 100)], "weights")]:
        with pytest.raises(DeploymentSpecError) as caught:
            d.change_traffic(weights)  # type: ignore[arg-type]
        assert caught.value.field == field
    with pytest.raises(DeploymentSpecError) as caught:
        d.promote("ghost")
    assert caught.value.field == "variant"
    d.change_traffic({"champion": 0, "challenger": 100}, reason="all in")
    assert d.weights == {"champion": 0, "challenger": 100} and d.revisions[-1]["reason"] == "all in"
    assert d.revision == 2 and len(d.collect_events()) == 2


def test_variants_and_the_shadow_are_frozen_values_that_round_trip_through_json() -> None:
    shadow = {"model": "fraud-nn", "version": 4, "artifact": {"uri": "s3://models/fraud-nn/4.onnx"}, "alias": "prod"}
    d = Deployment.create("fraud", [variant("champion", 90), variant("challenger", 10, version=2)], shadow, project="default")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.variants[0].weight = 0  # type: ignore[misc]
    assert [Variant.from_json(v.to_json()) for v in d.variants] == list(d.variants)
    assert d.variants[0].to_json() == variant("champion", 90) and d.shadow is not None
    assert Shadow.from_json(d.shadow.to_json()) == d.shadow and d.shadow.to_json() == shadow
    d.change_traffic({"champion": 50, "challenger": 50})
    assert d.revisions[-1]["variants"] is d.variants and d.revisions[-1]["shadow"] is d.shadow
    assert d.revisions[0]["variants"][0].weight == 90 and d.variants[0].weight == 50
