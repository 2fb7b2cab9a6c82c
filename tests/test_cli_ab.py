"""`trainyard ab`, `trainyard feedback`, `trainyard policy` and the client methods behind them, against scripted HTTP
exchanges (`httpx.MockTransport`): each test lists the requests the command must make (method, path, query, JSON
body) in order, with canned answers in the shape api/ab.py (`report()`, `ab_timeseries`) and api/deployments.py
return. No server, no engines: fast."""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

import api.cli.ab
from api.cli.ab_view import ab_bucket, ab_view, sparkline
from api.client import TrainyardClient
from api.schemas.deployments import DeploymentPublic
from tests.support.cli import trainyard as run_trainyard
from tests.support.fakes import API, INTERRUPT, Script, Step

pytestmark = pytest.mark.usefixtures("cli_env")

DEP = "/api/v1/deployments/churn-api"
METHOD = "mSPRT, normal mixture N(0, tau^2) (Johari et al., always valid inference)"
SHA = "ab" * 32


# ---- canned answers ------------------------------------------------------------------------------------------
def deployment_out(revision: int = 4, created_min_ago: float = 50, policy: dict[str, Any] | None = None,
                   **weights: int) -> dict[str, Any]:
    created = (datetime.now(timezone.utc) - timedelta(minutes=created_min_ago)).isoformat()
    versions = {"a": 3, "b": 4}
    return DeploymentPublic.model_validate({
        "name": "churn-api", "revision": revision, "active": True, "shadow": None, "created_by": None,
        "policy": policy, "created_at": created, "updated_at": created,
        "variants": [{"name": n, "model": "churn", "version": versions[n], "weight": w,
                      "artifact": {"uri": f"file:///data/onnx/churn-{versions[n]}.onnx", "sha256": SHA}}
                     for n, w in (weights or {"a": 50, "b": 50}).items()]}).model_dump(mode="json")


def summary(name: str, requests: int, errors: int, labelled: int, value: float, ci: list[float],
            latency: tuple[float, float, float], metric: str = "accuracy") -> dict[str, Any]:
    """One variant as domain.ab_stats.summarize() gives it."""
    return {"name": name, "metric": metric, "higher_is_better": metric == "accuracy", "requests": requests,
            "errors": errors, "error_rate": errors / requests, "labelled": labelled,
            "latency_p50_ms": latency[0], "latency_p95_ms": latency[1], "latency_p99_ms": latency[2],
            "value": value, "sd": 0.33, "ci": ci, "fixed_ci": [ci[0] + 0.01, ci[1] - 0.01], "confidence": 0.95,
            "tau": 0.033, "method": METHOD}


def comparison(challenger: str, difference: float, ci: list[float], p: float, decision: str,
               metric: str = "accuracy") -> dict[str, Any]:
    """One challenger as domain.ab_stats.compare() gives it."""
    return {"metric": metric, "higher_is_better": metric == "accuracy", "control": "a", "challenger": challenger,
            "n_control": 2048, "n_challenger": 1950, "control_value": 0.871, "challenger_value": 0.871 + difference,
            "difference": difference, "relative_difference": difference / 0.871, "ci": ci, "p_value": p,
            "decision": decision, "fixed_ci": [ci[0] + 0.008, ci[1] - 0.008], "fixed_p_value": p / 10,
            "alpha": 0.05, "confidence": 0.95, "min_samples": 100, "tau": 0.033, "method": METHOD}


def srm_check(revision: int, observed: dict[str, int], weights: dict[str, int], chi2: float, p: float,
              mismatch: bool) -> dict[str, Any]:
    total = sum(observed.values())
    return {"revision": revision, "observed": observed, "weights": weights, "chi2": chi2, "df": len(weights) - 1,
            "p_value": p, "expected": {k: total * w / 100 for k, w in weights.items()}, "unexpected": [],
            "threshold": 0.001, "mismatch": mismatch}


def report(decision: str = "challenger_better", mismatch: bool = False, shadow: bool = True,
           metric: str = "accuracy") -> dict[str, Any]:
    """GET …/ab, as api/ab.py report() builds it."""
    a = summary("a", 5120, 3, 2048, 0.871, [0.842, 0.897], (4.1, 7.9, 12.3), metric)
    b = summary("b", 4880, 2, 1950, 0.902, [0.876, 0.925], (4.4, 8.6, 14.0), metric)
    diff, ci, p = (0.031, [0.004, 0.058], 0.012) if decision == "challenger_better" else (-0.052, [-0.081, -0.023],
                                                                                           0.0004)
    checks = [srm_check(3, {"a": 2010}, {"a": 100}, None, None, False),  # type: ignore[arg-type]
              srm_check(4, {"a": 3110, "b": 4880} if mismatch else {"a": 3110, "b": 3070}, {"a": 50, "b": 50},
                        488.3 if mismatch else 0.26, 2.1e-108 if mismatch else 0.61, mismatch)]
    shadow_part = None
    if shadow:
        shadow_part = {**summary("shadow", 9980, 0, 3990, 0.866, [0.845, 0.885], (5.0, 9.1, 15.7), metric),
                       "compared": 9812, "agreement": 0.9731,
                       "versus_control": comparison("shadow", -0.005, [-0.03, 0.02], 1.0, "no_difference_yet", metric),
                       "by_variant": [{"variant": "a", "compared": 5020, "agreed": 4890,
                                       "shadow_latency_p50_ms": 5.0, "shadow_latency_p95_ms": 9.1,
                                       "shadow_latency_p99_ms": 15.7},
                                      {"variant": "b", "compared": 4792, "agreed": 4658,
                                       "shadow_latency_p50_ms": 5.0, "shadow_latency_p95_ms": 9.0,
                                       "shadow_latency_p99_ms": 15.6}]}
    return {"deployment": "churn-api", "metric": metric, "revision": 4, "control": "a",
            "window": {"since_ms": 0, "until_ms": 1_746_100_000_001, "revision": None},
            "variants": [{"name": "a", "weight": 50, **a}, {"name": "b", "weight": 50, **b}],
            "comparisons": [comparison("b", diff, ci, p, decision, metric)], "shadow": shadow_part,
            "srm": {"mismatch": mismatch, "revisions": checks}, "method": METHOD}


def timeseries(differences: list[float], bucket: int = 60) -> dict[str, Any]:
    """GET …/ab/timeseries: per bucket, b's cumulative comparison with a."""
    t0 = 1_746_097_000_000
    points = [{"t_ms": t0 + i * bucket * 1000,
               "variants": {"a": summary("a", 100, 0, 40, 0.87, [0.7, 0.95], (4.0, 8.0, 12.0)),
                            "b": summary("b", 100, 0, 40, 0.9, [0.75, 0.97], (4.0, 8.0, 12.0))},
               "comparisons": {"b": comparison("b", d, [d - 0.05, d + 0.05], 0.5, "no_difference_yet")}}
              for i, d in enumerate(differences)]
    return {"deployment": "churn-api", "metric": "accuracy", "bucket_s": bucket, "control": "a", "points": points}


# ---- scripted exchanges: tests/support/fakes.py's Step and Script, through the scripted_api fixture --------
def trainyard(*args: str, input: str | None = None) -> tuple[int, str]:
    return run_trainyard(*args, "--api", API, input=input)


def coloured(renderable: Any) -> str:
    """What a colour terminal 120 columns wide shows (with the ANSI codes)."""
    out = io.StringIO()
    Console(file=out, force_terminal=True, color_system="standard", width=120).print(renderable)
    return out.getvalue()


GREEN, RED, YELLOW = "\x1b[32m", "\x1b[31m", "\x1b[33m"
RISING = [0.0, 0.004, 0.011, 0.018, 0.02, 0.026, 0.031]


# ---- trainyard ab ----------------------------------------------------------------------------------------------
def test_ab_prints_the_variants_the_comparison_srm_shadow_sparkline_and_method(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("GET", DEP, answer=deployment_out(created_min_ago=50)),
                   Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, answer=report()),
                   Step("GET", f"{DEP}/ab/timeseries", params={"metric": "accuracy", "bucket": "60"},
                        answer=timeseries(RISING)))
    code, out = trainyard("ab", "churn-api")
    assert code == 0, out
    script.done()
    lines = out.splitlines()
    assert lines[0] == "churn-api revision 4: accuracy (higher is better), control a, all revisions"
    row_a = next(line for line in lines if line.startswith("a "))
    row_b = next(line for line in lines if line.startswith("b ") and "%" in line)
    assert row_a.split()[:5] == ["a", "50%", "5120", "2048", "0.06%"]
    assert "labelled" in lines[1] and "4.1/7.9/12.3" in row_a and "0.871 [0.842, 0.897]" in row_a
    assert row_b.split()[:4] == ["b", "50%", "4880", "1950"] and "0.902 [0.876, 0.925]" in row_b
    comparison_row = next(line for line in lines if "challenger_better" in line)
    assert comparison_row.split()[0] == "b"
    assert "+0.031 [+0.004, +0.058]" in comparison_row and "+3.6%" in comparison_row and "0.012" in comparison_row
    assert "sample ratio: ok" in lines
    text = " ".join(out.split())  # long lines wrap at 80 columns
    assert "shadow: agreement 97.3% of 9812 compared, p99 15.7 ms, accuracy 0.866 [0.845, 0.885], " \
           "vs a -0.005 (no_difference_yet)" in text
    spark_head = lines.index("b − a, cumulative (1 min buckets): min +0.000, max +0.031, now +0.031")
    assert lines[spark_head + 1].strip() == "▁▂▃▅▆▇█"
    assert text.endswith(f"method: {METHOD}; intervals and p-values valid at every look")


def test_ab_decision_colours_and_a_sample_ratio_mismatch(scripted_api) -> None:  # type: ignore[no-untyped-def]
    bad = report(decision="control_better", mismatch=True, shadow=False, metric="logloss")
    script = scripted_api(Step("GET", DEP, answer=deployment_out(created_min_ago=590)),
                   Step("GET", f"{DEP}/ab", params={"metric": "logloss", "revision": "4"}, answer=bad),
                   Step("GET", f"{DEP}/ab/timeseries", params={"metric": "logloss", "bucket": "600", "revision": "4"},
                        answer={**timeseries([]), "bucket_s": 600}))
    code, out = trainyard("ab", "churn-api", "--metric", "logloss", "--revision", "4")
    assert code == 0, out
    script.done()
    assert "logloss (lower is better)" in out and "control_better" in out and "-0.052 [-0.081, -0.023]" in out
    assert "<0.001" in out  # the p-value
    assert "sample ratio: MISMATCH in revision 4: observed a=3110, b=4880 vs weights a=50%, b=50% " \
           "(chi-square p=2.1e-108)" in " ".join(out.split())
    assert "revision 3" not in out  # its check passed
    assert "sample ratio: ok" not in out and "shadow:" not in out
    assert "cumulative" not in out and not any(c in out for c in "▁▂▃▄▅▆▇█")  # no points: no sparkline

    # the colours: the decision green / red / yellow, the mismatch red, ok green
    assert f"{GREEN}challenger_better" in coloured(ab_view(report(), None))
    shown = coloured(ab_view(bad, None))
    assert f"{RED}control_better" in shown and f"{RED}sample ratio: MISMATCH" in shown
    assert f"{YELLOW}no_difference_yet" in coloured(ab_view(report(decision="no_difference_yet"), None))
    assert f"{GREEN}sample ratio: ok" in coloured(ab_view(report(), None))


def test_ab_json_prints_the_raw_report(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("GET", f"{DEP}/ab", params={"metric": "rmse"}, answer=report(metric="rmse")))
    code, out = trainyard("ab", "churn-api", "--metric", "rmse", "--json")
    assert code == 0, out
    assert json.loads(out) == report(metric="rmse")
    script.done()

    scripted_api()  # a metric the API does not know is a usage error, no request
    code, out = trainyard("ab", "churn-api", "--metric", "auc")
    assert code == 2 and "auc" in out


# an API older than live streams: the deployment's stream route is not there (a 404 naming no field), so the watch
# re-reads the report every --interval
NO_STREAMS = Step("GET", f"{DEP}/stream", status=404, answer={"type": "about:blank", "title": "Not Found",
                                                             "status": 404, "detail": "Not Found"})


def test_ab_watch_redraws_rides_out_a_503_and_stops_on_ctrl_c(scripted_api) -> None:  # type: ignore[no-untyped-def]
    unavailable = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "starting"}
    script = scripted_api(Step("GET", DEP, answer=deployment_out()),
                   Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, answer=report()),
                   Step("GET", f"{DEP}/ab/timeseries", params={"metric": "accuracy", "bucket": "60"},
                        answer=timeseries(RISING)),
                   NO_STREAMS,
                   Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, status=503, answer=unavailable),
                   Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, answer=INTERRUPT))
    code, out = trainyard("ab", "churn-api", "--watch", "--interval", "0.1")
    assert code == 0, out
    script.done()
    assert "challenger_better" in out and "▁▂▃▅▆▇█" in out  # the last look stays on screen
    assert "API 503" in out and "starting; showing the last look" in out


def test_ab_watch_piped_prints_each_look_as_it_comes(scripted_api) -> None:  # type: ignore[no-untyped-def]
    look = [Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, answer=report()),
            Step("GET", f"{DEP}/ab/timeseries", params={"metric": "accuracy", "bucket": "60"},
                 answer=timeseries(RISING))]
    script = scripted_api(Step("GET", DEP, answer=deployment_out()), *look, NO_STREAMS, *look,
                          Step("GET", f"{DEP}/ab", params={"metric": "accuracy"}, answer=INTERRUPT))
    code, out = trainyard("ab", "churn-api", "--watch", "--interval", "0.1")  # not a terminal: no redraw in place
    assert code == 0, out
    script.done()
    assert out.count("challenger_better") == 2 and out.count("every 0.1 s, Ctrl-C to stop") == 2, out


def test_sparkline_and_bucket_choice() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0.5, 0.5, 0.5]) == "▄▄▄"
    long = sparkline([float(i) for i in range(1000)], width=60)
    assert len(long) == 60 and long[0] == "▁" and long[-1] == "█"
    assert [ab_bucket(s) for s in (100, 3000, 3600, 4000, 86400, 90 * 86400)] == [60, 60, 60, 120, 1800, 86400]


# ---- trainyard feedback ----------------------------------------------------------------------------------------
ITEMS = [{"request_id": "r-1", "label": "1"}, {"request_id": "r-2", "label": "0"}, {"request_id": "r-9", "value": 2.5}]


def test_feedback_posts_the_file_and_prints_the_counts(scripted_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(ITEMS))
    answer = {"received": 3, "known": 2, "unknown": 1, "unknown_request_ids": ["r-9"]}
    script = scripted_api(Step("POST", f"{DEP}/feedback", ITEMS, 202, answer))
    code, out = trainyard("feedback", "churn-api", str(path))
    assert code == 0, out
    script.done()
    lines = out.splitlines()
    assert lines[0] == "churn-api: received 3, known 2, unknown 1"
    assert lines[1].startswith("unknown request ids") and lines[1].endswith(": r-9")

    script = scripted_api(Step("POST", f"{DEP}/feedback", ITEMS[:1], 202,
                        {"received": 1, "known": 1, "unknown": 0, "unknown_request_ids": []}))
    code, out = trainyard("feedback", "churn-api", "-", "--json", input=json.dumps(ITEMS[:1]))
    assert code == 0 and json.loads(out) == {"received": 1, "known": 1, "unknown": 0, "unknown_request_ids": []}
    script.done()

    scripted_api()  # not a list: the one-line error, no request
    path.write_text(json.dumps({"request_id": "r-1", "label": "1"}))
    code, out = trainyard("feedback", "churn-api", str(path))
    assert code == 1 and out.startswith("error: Invalid input: ") and "labels.json" in out and "list" in out


def test_feedback_over_the_api_limit_is_sent_in_parts(scripted_api, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.cli.ab, "FEEDBACK_BATCH", 2)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(ITEMS))
    script = scripted_api(Step("POST", f"{DEP}/feedback", ITEMS[:2], 202,
                        {"received": 2, "known": 2, "unknown": 0, "unknown_request_ids": []}),
                   Step("POST", f"{DEP}/feedback", ITEMS[2:], 202,
                        {"received": 1, "known": 0, "unknown": 1, "unknown_request_ids": ["r-9"]}))
    code, out = trainyard("feedback", "churn-api", str(path))
    assert code == 0 and out.splitlines()[0] == "churn-api: received 3, known 2, unknown 1", out
    script.done()


# ---- trainyard policy ------------------------------------------------------------------------------------------
POLICY = {"metric": "accuracy", "min_samples": 500, "max_p_value": 0.05, "ramp": [10, 25, 50, 100],
          "step_every_s": 300, "max_p99_latency_ms": 50}


def test_policy_set_and_clear_send_the_right_bodies(scripted_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    stored = {**POLICY, "min_lift": 0.0, "max_error_rate": None}
    script = scripted_api(Step("PUT", f"{DEP}/policy", {"policy": POLICY, "reason": "ramp b"},
                        answer=deployment_out(5, policy=stored, a=90, b=10)))
    code, out = trainyard("policy", "churn-api", str(path), "--reason", "ramp b")
    assert code == 0, out
    script.done()
    assert out.splitlines() == ["churn-api revision 5: a=churn v3 90%, b=churn v4 10%",
                                "policy: accuracy; ramp 10%→25%→50%→100% every 300 s; min 500 labelled; p ≤ 0.05; "
                                "p99 ≤ 50 ms"]

    # the PUT body itself is accepted as the file too
    script = scripted_api(Step("PUT", f"{DEP}/policy", {"policy": POLICY, "reason": "from the file"},
                        answer=deployment_out(6, policy=stored, a=90, b=10)))
    code, out = trainyard("policy", "churn-api", "-", "--json",
                          input=json.dumps({"policy": POLICY, "reason": "from the file"}))
    assert code == 0 and json.loads(out)["policy"] == stored, out
    script.done()

    script = scripted_api(Step("PUT", f"{DEP}/policy", {"policy": None}, answer=deployment_out(7, a=90, b=10)))
    code, out = trainyard("policy", "churn-api", "--clear")
    assert code == 0 and out.splitlines()[-1] == "policy: none", out
    script.done()

    scripted_api()  # neither or both: a usage error, no request
    assert trainyard("policy", "churn-api")[0] == 2
    assert trainyard("policy", "churn-api", str(path), "--clear")[0] == 2


# ---- the Python client -----------------------------------------------------------------------------------------
def test_the_client_methods() -> None:
    since = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
    script = Script(
        Step("GET", f"{DEP}/ab", answer=report(), params={"metric": "mae", "since": "1746100800000",
                                                          "until": "1746104400000", "revision": "3"}),
        Step("GET", f"{DEP}/ab/timeseries", answer=timeseries([0.01]), params={"metric": "accuracy", "bucket": "300"}),
        Step("POST", f"{DEP}/feedback", ITEMS, 202, {"received": 3, "known": 3, "unknown": 0,
                                                     "unknown_request_ids": []}),
        Step("PUT", f"{DEP}/policy", {"policy": POLICY}, answer=deployment_out(5, policy=POLICY)),
        Step("PUT", f"{DEP}/policy", {"policy": None, "reason": "manual"}, answer=deployment_out(6)),
    )
    with TrainyardClient(API, transport=httpx.MockTransport(script)) as ty:
        assert ty.ab_report("churn-api", "mae", since=since, until=1_746_104_400_000, revision=3) == report()
        assert len(ty.ab_timeseries("churn-api", bucket=300)["points"]) == 1
        assert ty.feedback("churn-api", ITEMS)["known"] == 3
        assert ty.set_policy("churn-api", POLICY)["policy"] == POLICY
        assert ty.set_policy("churn-api", None, reason="manual")["revision"] == 6
    script.done()
