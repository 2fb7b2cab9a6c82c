"""Hypothesis strategies of commands shared by an aggregate's tests and its read model's tests, each with the
function that applies one drawn command: the TrainingJob's, the Study's, and the Deployment's (whose `run` is also
the reference model the aggregate must follow)."""
from __future__ import annotations

import copy
import math
from typing import Any
from uuid import UUID, uuid4

from hypothesis import strategies as st

from domain.deployment import Deployment
from domain.deployment_spec import (DeploymentError, DeploymentInactiveError, DeploymentSpecError,
                                    NoPreviousRevisionError)
from domain.study import Study
from domain.training_job import TrainingJob


# ---- TrainingJob ----------------------------------------------------------------------------------------
leases = st.sampled_from(["lease-a", "lease-b", "lease-c"])
job_commands = st.one_of(
    st.tuples(st.just("claim"), leases, st.sampled_from(["h:1", "h:2"])),
    st.tuples(st.just("progress"), leases, st.integers(0, 12), st.integers(1, 10)),
    st.tuples(st.just("complete"), leases),
    st.tuples(st.just("fail"), leases),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("confirm_cancelled"), leases),
    st.tuples(st.just("hand_back"), leases),
    st.tuples(st.just("expire"), leases),
    st.tuples(st.just("requeue")),
)


def apply_job_command(job: TrainingJob, cmd: tuple) -> None:
    """Call the aggregate's method for one drawn command (it may refuse)."""
    name, *args = cmd
    if name == "claim":
        job.claim(args[0], args[1])
    elif name == "progress":
        job.record_progress(args[0], args[1], args[2])
    elif name == "complete":
        job.complete(args[0], {"rmse": 1.0}, {"uri": "file:///m", "sha256": "x"})
    elif name == "fail":
        job.fail(args[0], "boom")
    elif name == "cancel":
        job.request_cancel()
    elif name == "confirm_cancelled":
        job.confirm_cancelled(args[0])
    elif name == "hand_back":
        job.hand_back(args[0], "stopping")
    elif name == "expire":
        job.expire_lease(args[0], "runner gone")
    else:
        job.requeue("no work item")


# ---- Study ----------------------------------------------------------------------------------------------
TRIAL_JOBS = [UUID(int=i) for i in range(1, 7)]  # the job ids trials are asked with


def new_study(direction: str = "maximize", n_trials: int = 3, max_parallel: int = 2) -> Study:
    return Study.create(id=uuid4(), project="default", name="s", framework="lightgbm", task="regression",
                        dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": direction},
                        search_space={"lr": {"type": "float", "low": 0.01, "high": 0.3}}, fixed_params={},
                        sampler={"type": "tpe", "seed": 1}, pruner={"type": "median"}, n_trials=n_trials,
                        max_parallel=max_parallel, timeout_s=None, priority="medium", tags=["t"])


numbers = st.sampled_from([0, 0, 1, 1, 2, 2, 3, -1, 5])  # for ask: the right number, a repeat or a gap
picks = st.integers(0, 7)  # for the other trial commands: an existing trial (see `_pick`), or none
values = st.sampled_from([None, math.nan, math.inf, 0.5, 0.5, 1.0, 1.0, -2.0])  # ties are likely
trial_commands = st.one_of(
    st.tuples(st.just("ask"), numbers, st.sampled_from([0.1, 0.2]), st.sampled_from(TRIAL_JOBS)),
    st.tuples(st.just("ask_next"), st.just(None)),
    st.tuples(st.just("ask_next"), st.sampled_from([None, None, *TRIAL_JOBS])),
    st.tuples(st.just("start"), picks),
    st.tuples(st.just("prune"), picks, st.integers(-1, 20), values),
    st.tuples(st.just("finish"), picks, st.sampled_from(["completed", "pruned", "failed", "lost"]), values),
    st.tuples(st.just("finish"), picks, st.just("completed"), values),
)
end_commands = st.sampled_from([("cancel",), ("confirm_cancelled",), ("complete",), ("fail",)])
study_commands = st.one_of(*[trial_commands] * 16, end_commands)  # the study's end is rarer than its trials' events


def _pick(study: Study, k: int) -> int:
    """Picks 0-5 name an existing trial (when there is one), 6 and 7 a number no trial has."""
    if k == 6:
        return -1
    return k % len(study.trials) if study.trials and k < 6 else len(study.trials) + 1


def apply_study_command(study: Study, cmd: tuple) -> None:
    """Call the aggregate's method for one drawn command (it may refuse)."""
    name, *args = cmd
    if name in ("start", "prune", "finish"):
        args[0] = _pick(study, args[0])
    if name == "ask":
        study.ask_trial(args[0], {"lr": args[1]}, args[2])
    elif name == "ask_next":  # the driver's usual call: the right number, a fresh (None) or a reused job
        study.ask_trial(study.next_number, {"lr": 0.1}, args[0] or UUID(int=100 + study.next_number))
    elif name == "start":
        study.trial_started(args[0])
    elif name == "prune":
        study.prune_trial(args[0], args[1], args[2])
    elif name == "finish":
        study.finish_trial(args[0], args[1], args[2], error="boom" if args[1] == "failed" else None)
    elif name == "cancel":
        study.request_cancel("stop")
    elif name == "confirm_cancelled":
        study.confirm_cancelled()
    elif name == "complete":
        study.complete("timeout")
    else:
        study.fail("every trial failed")


# ---- Deployment -----------------------------------------------------------------------------------------
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
deployment_commands = st.sampled_from(["traffic"] * 8 + ["promote"] * 5 + ["update"] * 8 + ["rollback"] * 6 + ["deactivate"]
                           ).flatmap(KINDS.__getitem__)  # the end is rare
def as_json(revision: dict[str, Any]) -> dict[str, Any]:
    """A revision of `Deployment.revisions` with its variants and shadow in their JSON form (the reference model's)."""
    shadow = revision["shadow"]
    return {**revision, "variants": [v.to_json() for v in revision["variants"]],
            "shadow": None if shadow is None else shadow.to_json()}


def run_deployment_command(d: Deployment, cmd: tuple) -> tuple[Any, Any]:
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
