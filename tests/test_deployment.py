"""The Deployment aggregate: any sequence of commands keeps a legal state that follows a reference model, refused
commands change nothing and name what was wrong, and the events rebuild the same object."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from domain.contract import envelope
from domain.deployment import (CHANGES, Deployment, DeploymentError, DeploymentInactiveError, DeploymentSpecError,
                               NoPreviousRevisionError, Shadow, Variant, deployment_id)

NAMES = ["a", "b", "canary", "x_1", "v-2", "z9", "champion", "c", "d", "e", "f"]


def variant(name: str, weight: int, version: int = 1, model: str = "fraud-gbm") -> dict[str, Any]:
    return {"name": name, "model": model, "version": version, "weight": weight,
            "artifact": {"uri": f"s3://models/{model}/{version}.onnx", "sha256": "0" * 64}}


def split(draw: Any, k: int) -> list[int]:
    """k integer weights 0..100 summing to 100 (zeros are likely)."""
    cuts = sorted(draw(st.lists(st.sampled_from([0, 0, 10, 25, 50, 50, 75, 90, 100, 33, 67]), min_size=k - 1,
                                max_size=k - 1)))
    bounds = [0, *cuts, 100]
    return [bounds[i + 1] - bounds[i] for i in range(k)]


# A corruption of one variant of an otherwise valid list: (what, the field it breaks).
CORRUPTIONS = ["model", "version0", "version_bool", "weight_float", "weight_neg", "artifact", "extra", "missing",
               "bad_name", "dup_name", "not_dict"]


@st.composite
def variant_lists(draw: Any) -> tuple[list[Any], str | None]:
    """(variants, the field the aggregate must name, or None when valid)."""
    shape = draw(st.sampled_from(["valid"] * 10 + ["corrupt"] * 4 + ["sum", "empty", "too_many"]))
    if shape == "empty":
        return [], "variants"
    k = 11 if shape == "too_many" else draw(st.integers(1, 4))
    names = draw(st.permutations(NAMES))[:k]
    weights = split(draw, k) if k <= 10 else [100] + [0] * (k - 1)
    out: list[Any] = [variant(n, w, version=draw(st.integers(1, 3))) for n, w in zip(names, weights)]
    if shape in ("valid", "too_many"):
        return out, None if shape == "valid" else "variants"
    if shape == "sum":
        i = next((i for i, v in enumerate(out) if v["weight"] < 100), None)
        if i is None:
            out[0]["weight"] -= 1
        else:
            out[i]["weight"] += 1
        return out, "variants"
    i = draw(st.integers(0, k - 1))
    what = draw(st.sampled_from(CORRUPTIONS if i > 0 else [c for c in CORRUPTIONS if c != "dup_name"]))
    field = {"model": "model", "version0": "version", "version_bool": "version", "weight_float": "weight",
             "weight_neg": "weight", "artifact": "artifact", "extra": "color", "missing": "artifact",
             "bad_name": "name", "dup_name": "name", "not_dict": None}[what]
    v = out[i]
    if what == "model":
        v["model"] = draw(st.sampled_from(["", "m\x00", "m" * 201, 7]))
    elif what == "version0":
        v["version"] = 0
    elif what == "version_bool":
        v["version"] = True
    elif what == "weight_float":
        v["weight"] = float(v["weight"])
    elif what == "weight_neg":
        v["weight"] = -1
    elif what == "artifact":
        v["artifact"] = "s3://x"
    elif what == "extra":
        v["color"] = "blue"
    elif what == "missing":
        del v["artifact"]
    elif what == "bad_name":
        v["name"] = draw(st.sampled_from(["Bad", "-x", "", "a" * 33, "a b", None]))
    elif what == "dup_name":
        v["name"] = out[draw(st.integers(0, i - 1))]["name"]
    else:
        out[i] = ["not", "a", "dict"]
    return out, f"variants[{i}]" + (f".{field}" if field else "")


shadows = st.sampled_from([
    (None, None), (None, None), (None, None),
    ({"model": "fraud-nn", "version": 4, "artifact": {"uri": "s3://models/fraud-nn/4.onnx"}}, None),
    ({"model": "fraud-nn", "version": 5, "artifact": {"uri": "s3://models/fraud-nn/5.onnx"}}, None),
    ({"model": "", "version": 4, "artifact": {}}, "shadow.model"),
    ({"model": "fraud-nn", "version": 4}, "shadow.artifact"),
    ({"model": "fraud-nn", "version": -1, "artifact": {}}, "shadow.version"),
    ("fraud-nn", "shadow"),
])
reasons = st.sampled_from([(None, None)] * 4 + [("rollout step", None)] * 3 + [
    ("é" * 500, None), ("x" * 501, "reason"), ("bad\x00reason", "reason"), ("new\nline", "reason"), (5, "reason")])
traffic = st.tuples(st.just("traffic"), st.sampled_from(["valid"] * 5 + ["unknown", "missing", "bad", "sum"]),
                    st.data(), reasons)
promote = st.tuples(st.just("promote"), st.integers(-1, 9), reasons)  # -1: an unknown variant, else k % n
update = st.tuples(st.just("update"), variant_lists(), shadows, reasons)
rollback = st.tuples(st.just("rollback"), reasons)
deactivate = st.tuples(st.just("deactivate"), reasons)
KINDS = {"traffic": traffic, "promote": promote, "update": update, "rollback": rollback, "deactivate": deactivate}
commands = st.sampled_from(["traffic"] * 8 + ["promote"] * 5 + ["update"] * 8 + ["rollback"] * 6 + ["deactivate"]
                           ).flatmap(KINDS.__getitem__)  # the end is rare
EVENT_OF_CHANGE = {"traffic": "TrafficChanged", "promote": "Promoted", "update": "Updated", "rollback": "RolledBack",
                   "deactivate": "Deactivated"}
STATE_KEYS = ("revision", "change", "reason", "variants", "shadow", "active", "rolled_back_to")


def as_json(revision: dict[str, Any]) -> dict[str, Any]:
    """A revision of `Deployment.revisions` with its variants and shadow in their JSON form (the reference model's)."""
    shadow = revision["shadow"]
    return {**revision, "variants": [v.to_json() for v in revision["variants"]],
            "shadow": None if shadow is None else shadow.to_json()}


def state(d: Deployment) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in d.__dict__.items() if k != "_pending_events"})


def run(d: Deployment, cmd: tuple) -> tuple[Any, Any]:
    """Apply `cmd`; returns (what the reference model expects: a revision dict, an error class or a spec
    field) and (what happened: None or the exception)."""
    name = cmd[0]
    revs = [as_json(r) for r in d.revisions]
    cur = revs[-1]
    reason, reason_field = cmd[-1]
    new = {"revision": d.revision + 1, "reason": reason, "shadow": cur["shadow"], "active": True,
           "rolled_back_to": None, "change": name}
    expect: Any
    if name == "traffic":
        mode, data = cmd[1], cmd[2]
        names = [v["name"] for v in cur["variants"]]
        ws = split(data.draw, len(names))
        weights = dict(zip(names, ws))
        field = None
        if mode == "unknown":
            weights["zz"] = 0
            field = "weights.zz"
        elif mode == "missing":
            del weights[names[0]]
            field = f"weights.{names[0]}"
        elif mode == "bad":
            weights[names[0]] = data.draw(st.sampled_from([101, -1, True, 50.0, "50", None]))
            field = f"weights.{names[0]}"
        elif mode == "sum":
            i = next((i for i, n in enumerate(names) if weights[n] < 100), None)
            if i is None:
                weights[names[0]] -= 1
            else:
                weights[names[i]] += 1
            field = "weights"
        expect = field or reason_field or {**new, "variants": [{**v, "weight": weights[v["name"]]}
                                                               for v in cur["variants"]]}
        args: tuple = (d.change_traffic, weights)
    elif name == "promote":
        k = cmd[1]
        names = [v["name"] for v in cur["variants"]]
        target = names[k % len(names)] if k >= 0 else "nope"
        expect = ("variant" if target == "nope" else reason_field) or {
            **new, "variants": [{**v, "weight": 100 if v["name"] == target else 0} for v in cur["variants"]]}
        args = (d.promote, target)
    elif name == "update":
        (variants, vfield), (shadow, sfield) = cmd[1], cmd[2]
        expect = vfield or sfield or reason_field or {**new, "variants": variants, "shadow": shadow}
        args = (d.update, copy.deepcopy(variants), copy.deepcopy(shadow))
    elif name == "rollback":
        if d.revision < 2:
            expect = NoPreviousRevisionError
        else:
            back = revs[-2]
            expect = reason_field or {**new, "variants": back["variants"], "shadow": back["shadow"],
                                      "rolled_back_to": back["revision"]}
        args = (d.rollback,)
    else:
        expect = reason_field or {**new, "variants": cur["variants"], "active": False, "change": "deactivate"}
        args = (d.deactivate,)
    if not d.active:
        expect = DeploymentInactiveError
    try:
        args[0](*args[1:], reason=reason)
    except (DeploymentError, DeploymentSpecError) as e:
        return expect, e
    return expect, None


@settings(max_examples=150, deadline=None)
@given(variant_lists().filter(lambda vf: vf[1] is None), shadows.filter(lambda s: s[1] is None),
       st.lists(commands, min_size=5, max_size=30))
def test_any_command_sequence_follows_the_reference_model_and_replays_to_the_same_object(
        initial: tuple, shadow: tuple, cmds: list[tuple]) -> None:
    d = Deployment.create("fraud-scoring", initial[0], shadow[0], "first rollout")
    events = list(d.collect_events())
    model = [{"revision": 1, "change": "created", "reason": "first rollout", "variants": initial[0],
              "shadow": shadow[0], "active": True, "rolled_back_to": None}]
    for cmd in cmds:
        before = state(d)
        expect, error = run(d, cmd)
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
    return Deployment.create("fraud", [variant("champion", 90), variant("challenger", 10, version=2)])


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
        Deployment.create(name, variants, shadow, reason)
    assert caught.value.field == field


def test_creation_derives_the_id_from_the_name_and_keeps_its_own_copies() -> None:
    variants = [variant("a", 100)]
    d = Deployment.create("fraud", variants, reason=None)
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
    d = Deployment.create("fraud", [variant("champion", 90), variant("challenger", 10, version=2)], shadow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.variants[0].weight = 0  # type: ignore[misc]
    assert [Variant.from_json(v.to_json()) for v in d.variants] == list(d.variants)
    assert d.variants[0].to_json() == variant("champion", 90) and d.shadow is not None
    assert Shadow.from_json(d.shadow.to_json()) == d.shadow and d.shadow.to_json() == shadow
    d.change_traffic({"champion": 50, "challenger": 50})
    assert d.revisions[-1]["variants"] is d.variants and d.revisions[-1]["shadow"] is d.shadow
    assert d.revisions[0]["variants"][0].weight == 90 and d.variants[0].weight == 50
