"""domain/ab_stats.py: decisions on seeded simulations, the type-I error under peeking (always-valid vs naive), the
confidence-sequence formula, the fixed-horizon reference against statsmodels' numbers, SRM, and degenerate input."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from domain.ab_stats import (TAU_SCALE, VariantStats, always_valid_p, compare, confidence_sequence, cs_half_width,
                             fixed_horizon, higher_is_better, sequential_test, srm, summarize)

ALPHA = 0.05


def vs(name: str, values: Any = None, *, n: int | None = None, total: float = 0.0, total_sq: float = 0.0,
       requests: int | None = None, errors: int = 0) -> VariantStats:
    """Stats from per-prediction values (or from the sums given)."""
    if values is not None:
        values = np.asarray(values, dtype=float)
        n, total, total_sq = len(values), float(values.sum()), float((values ** 2).sum())
    n = n or 0
    return VariantStats(name=name, weight=50, requests=n if requests is None else requests, errors=errors,
                        labelled=n, metric_sum=total, metric_sum_sq=total_sq)


def bernoulli(name: str, rng: np.random.Generator, p: float, n: int) -> VariantStats:
    return vs(name, (rng.random(n) < p).astype(float))


def plain(value: Any) -> None:
    """Only JSON-able plain Python values, no NaN/inf anywhere."""
    json.dumps(value, allow_nan=False)

    def walk(v: Any) -> None:
        assert v is None or type(v) in (bool, int, float, str, list, dict), type(v)
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(value)


# --- decisions -------------------------------------------------------------------------------------------------

def test_true_lift_detected_and_ci_covers_it() -> None:
    rng = np.random.default_rng(7)
    control, challenger = bernoulli("control", rng, 0.80, 5000), bernoulli("b", rng, 0.85, 5000)
    r = compare(control, challenger, "accuracy")
    assert r["decision"] == "challenger_better"
    assert r["ci"][0] < 0.05 < r["ci"][1] and r["ci"][0] > 0
    assert r["p_value"] <= ALPHA and r["higher_is_better"] is True
    assert r["difference"] == pytest.approx(r["challenger_value"] - r["control_value"])
    swapped = compare(challenger, control, "accuracy")
    assert swapped["decision"] == "control_better"
    assert swapped["ci"][0] < -0.05 < swapped["ci"][1] < 0
    assert swapped["p_value"] == pytest.approx(r["p_value"])
    plain(r)


def test_equal_arms_no_difference_yet() -> None:
    rng = np.random.default_rng(11)
    r = compare(bernoulli("control", rng, 0.80, 5000), bernoulli("b", rng, 0.80, 5000), "accuracy")
    assert r["decision"] == "no_difference_yet"
    assert r["p_value"] > ALPHA and r["ci"][0] < 0 < r["ci"][1]


def test_tiny_samples_are_underpowered() -> None:
    rng = np.random.default_rng(3)
    big_gap = compare(bernoulli("control", rng, 0.2, 50), bernoulli("b", rng, 0.9, 50), "accuracy")
    assert big_gap["decision"] == "inconclusive_underpowered"
    assert big_gap["p_value"] is not None  # the numbers are still reported
    one_side = compare(bernoulli("control", rng, 0.8, 5000), bernoulli("b", rng, 0.9, 99), "accuracy")
    assert one_side["decision"] == "inconclusive_underpowered"
    assert compare(bernoulli("control", rng, 0.5, 5000), bernoulli("b", rng, 0.95, 99), "accuracy",
                   min_samples=50)["decision"] == "challenger_better"


@pytest.mark.parametrize("metric", ["logloss", "mae", "rmse"])
def test_lower_is_better_metrics(metric: str) -> None:
    rng = np.random.default_rng(5)
    worse, better = rng.gamma(2.0, 0.25, 4000), rng.gamma(2.0, 0.20, 4000)  # means 0.5 and 0.4
    assert higher_is_better(metric) is False
    r = compare(vs("control", worse), vs("b", better), metric)
    assert r["decision"] == "challenger_better" and r["difference"] < 0 and r["higher_is_better"] is False
    assert compare(vs("control", better), vs("b", worse), metric)["decision"] == "control_better"


def test_unknown_metric() -> None:
    for metric in ("auc", "f1", ""):
        with pytest.raises(ValueError):
            compare(vs("a", [1, 0]), vs("b", [1, 0]), metric)
        with pytest.raises(ValueError):
            summarize(vs("a", [1, 0]), metric)
    with pytest.raises(ValueError):
        compare(vs("a", [1, 0]), vs("b", [1, 0]), "accuracy", tau=0.0)


# --- peeking: type-I error ---------------------------------------------------------------------------------------

def peeked(rng: np.random.Generator, sims: int, looks: int, step: int, p_c: float, p_t: float,
           tau: float | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Bernoulli arms, a look after every `step` per arm: the sequential_test arrays (sims × looks)."""
    x_c = rng.binomial(step, p_c, size=(sims, looks)).cumsum(axis=1).astype(float)
    x_t = rng.binomial(step, p_t, size=(sims, looks)).cumsum(axis=1).astype(float)
    n = np.broadcast_to(step * np.arange(1, looks + 1, dtype=float), (sims, looks))
    return sequential_test(n, x_c, x_c, n, x_t, x_t, "accuracy", ALPHA, tau), n, x_c, x_t


def test_aa_peeking_always_valid_vs_naive() -> None:
    rng = np.random.default_rng(2024)
    r, n, x_c, x_t = peeked(rng, 200, 100, 100, 0.80, 0.80)
    running_min = np.minimum.accumulate(r["p_value"], axis=1)
    always_valid_fpr = float((running_min[:, -1] <= ALPHA).mean())
    naive_fpr = float((r["fixed_p_value"] <= ALPHA).any(axis=1).mean())
    assert always_valid_fpr <= 0.08, always_valid_fpr
    assert naive_fpr > 0.15, naive_fpr
    # one look at the end only: the fixed-horizon test is fine there (about alpha)
    assert float((r["fixed_p_value"][:, -1] <= ALPHA).mean()) <= 0.10
    # the vectorized numbers are compare()'s
    for i, j in [(0, 0), (3, 10), (57, 99), (199, 42)]:
        c = compare(vs("control", n=int(n[i, j]), total=x_c[i, j], total_sq=x_c[i, j]),
                    vs("b", n=int(n[i, j]), total=x_t[i, j], total_sq=x_t[i, j]), "accuracy")
        assert c["p_value"] == pytest.approx(r["p_value"][i, j], rel=1e-9, abs=1e-300)
        assert c["ci"] == pytest.approx([r["ci_low"][i, j], r["ci_high"][i, j]], rel=1e-9)
        assert c["fixed_p_value"] == pytest.approx(r["fixed_p_value"][i, j], rel=1e-9)


@pytest.mark.parametrize("tau", [0.005, 0.2])
def test_aa_peeking_any_fixed_tau(tau: float) -> None:
    r, *_ = peeked(np.random.default_rng(99), 200, 100, 100, 0.80, 0.80, tau)
    assert float((r["p_value"] <= ALPHA).any(axis=1).mean()) <= 0.08


def test_aa_peeking_skewed_continuous_metric() -> None:
    rng = np.random.default_rng(8)
    sims, looks, step = 200, 100, 100

    def arm() -> tuple[np.ndarray, np.ndarray]:
        x = rng.gamma(0.5, 1.0, size=(sims, looks, step))  # skewed, like absolute errors
        return x.sum(axis=2).cumsum(axis=1), (x * x).sum(axis=2).cumsum(axis=1)

    (s_c, q_c), (s_t, q_t) = arm(), arm()
    n = np.broadcast_to(step * np.arange(1, looks + 1, dtype=float), (sims, looks))
    r = sequential_test(n, s_c, q_c, n, s_t, q_t, "mae")
    assert float((r["p_value"] <= ALPHA).any(axis=1).mean()) <= 0.08
    assert float((r["fixed_p_value"] <= ALPHA).any(axis=1).mean()) > 0.15


def test_power_with_true_lift_under_peeking() -> None:
    r, *_ = peeked(np.random.default_rng(1), 100, 100, 100, 0.80, 0.85)
    rejected = r["p_value"] <= ALPHA
    assert rejected.any(axis=1).mean() >= 0.95
    first = rejected.argmax(axis=1)
    assert np.all(r["difference"][np.arange(100), first][rejected.any(axis=1)] > 0)  # the right direction


# --- the formulas --------------------------------------------------------------------------------------------------

def test_mixture_likelihood_ratio_by_integration() -> None:
    d, v, tau = 0.013, 4e-5, 0.03
    lam = integrate.quad(lambda th: stats.norm.pdf(d, th, math.sqrt(v)) * stats.norm.pdf(th, 0, tau),
                         -0.5, 0.5, points=[0, d], limit=200)[0] / stats.norm.pdf(d, 0, math.sqrt(v))
    assert always_valid_p(d, v, tau) == pytest.approx(min(1.0, 1 / lam), rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(d=st.floats(-1, 1), v=st.floats(1e-10, 1.0), tau=st.floats(1e-4, 10.0), alpha=st.floats(0.001, 0.5))
def test_confidence_sequence_inverts_the_test(d: float, v: float, tau: float, alpha: float) -> None:
    lo, hi = confidence_sequence(d, v, tau, alpha)
    assert lo < d < hi
    # the end points are exactly where the mSPRT of H0: δ = δ0 rejects at level alpha
    assert always_valid_p(d, v, tau, null=lo) == pytest.approx(alpha, rel=1e-6)
    assert always_valid_p(d, v, tau, null=hi) == pytest.approx(alpha, rel=1e-6)
    # 0 is outside the interval exactly when p <= alpha (away from the boundary)
    p = always_valid_p(d, v, tau)
    if abs(p - alpha) > 1e-9:
        assert (p <= alpha) == (not lo < 0 < hi)
    # wider than the fixed-horizon interval
    f_lo, f_hi, _ = fixed_horizon(d, v, alpha)
    assert lo < f_lo and hi > f_hi


def test_confidence_sequence_wider_than_fixed_in_report() -> None:
    rng = np.random.default_rng(4)
    r = compare(bernoulli("control", rng, 0.80, 5000), bernoulli("b", rng, 0.85, 5000), "accuracy")
    assert r["ci"][0] < r["fixed_ci"][0] and r["ci"][1] > r["fixed_ci"][1]
    assert r["p_value"] > r["fixed_p_value"]
    s = summarize(bernoulli("control", rng, 0.80, 5000), "accuracy")
    assert s["ci"][0] < s["fixed_ci"][0] < s["value"] < s["fixed_ci"][1] < s["ci"][1]


def test_fixed_horizon_matches_statsmodels_two_proportions() -> None:
    # statsmodels 0.15: confint_proportions_2indep(4250, 5000, 4000, 5000, method="wald", compare="diff") and
    # test_proportions_2indep(..., method="wald")
    r = compare(vs("control", n=5000, total=4000, total_sq=4000), vs("b", n=5000, total=4250, total_sq=4250),
                "accuracy")
    assert r["fixed_ci"] == pytest.approx([0.03513783723040572, 0.06486216276959414], rel=1e-12)
    assert r["fixed_p_value"] == pytest.approx(4.286954777292734e-11, rel=1e-9)
    assert r["difference"] / math.sqrt(0.8 * 0.2 / 5000 + 0.85 * 0.15 / 5000) == pytest.approx(6.593804733957862)


CTL = [0.31, 0.12, 0.95, 0.44, 0.27, 0.08, 0.66, 0.51, 0.19, 0.73, 0.38, 0.22]
CHL = [0.21, 0.05, 0.62, 0.33, 0.18, 0.11, 0.47, 0.29, 0.14, 0.58]


def test_fixed_horizon_matches_statsmodels_two_means() -> None:
    # statsmodels 0.15: CompareMeans(DescrStatsW(CHL), DescrStatsW(CTL)).zconfint_diff(usevar="unequal"),
    # .ztest_ind(usevar="unequal"); DescrStatsW(CTL).zconfint_mean()
    r = compare(vs("control", CTL), vs("b", CHL), "mae", min_samples=2)
    assert r["fixed_ci"] == pytest.approx([-0.3014481480446025, 0.08744814804460252], rel=1e-10)
    assert r["fixed_p_value"] == pytest.approx(0.2808019225034818, rel=1e-10)
    assert summarize(vs("control", CTL), "mae")["fixed_ci"] == pytest.approx(
        [0.2548103539278661, 0.5551896460721338], rel=1e-10)


def test_fixed_horizon_against_statsmodels_live() -> None:
    wstats = pytest.importorskip("statsmodels.stats.weightstats")
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    cm = wstats.CompareMeans(wstats.DescrStatsW(np.array(CHL)), wstats.DescrStatsW(np.array(CTL)))
    assert compare(vs("c", CTL), vs("b", CHL), "mae")["fixed_ci"] == pytest.approx(
        list(cm.zconfint_diff(usevar="unequal")), rel=1e-10)
    assert compare(vs("c", n=900, total=700, total_sq=700), vs("b", n=1100, total=880, total_sq=880),
                   "accuracy")["fixed_ci"] == pytest.approx(
        list(proportion.confint_proportions_2indep(880, 1100, 700, 900, method="wald")), rel=1e-10)


def test_fixed_horizon_close_to_scipy_welch() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.gamma(2.0, 0.3, 5000), rng.gamma(2.0, 0.28, 6000)
    welch = stats.ttest_ind(b, a, equal_var=False)
    lo, hi = welch.confidence_interval(0.95)
    r = compare(vs("control", a), vs("b", b), "mae")
    width = hi - lo
    assert r["fixed_ci"] == pytest.approx([lo, hi], abs=1e-3 * width)  # t vs z at ~10,000 df
    # the same statistic (unequal variances, divisor n − 1); the p-value from the normal instead of Student's t
    assert r["fixed_p_value"] == pytest.approx(2 * stats.norm.sf(abs(welch.statistic)), rel=1e-9)
    assert r["fixed_p_value"] < welch.pvalue


# --- metric values from known sums ----------------------------------------------------------------------------------

def test_values_from_known_sums() -> None:
    probs = np.array([0.9, 0.8, 0.6, 0.95, 0.3])
    ll = -np.log(probs)
    s = summarize(vs("a", ll), "logloss")
    assert s["value"] == pytest.approx(float(ll.mean())) and s["higher_is_better"] is False
    assert s["sd"] == pytest.approx(float(ll.std(ddof=1)))
    errors = np.array([0.5, -1.0, 2.0, 0.0, -0.5, 1.5])
    mae = summarize(vs("a", np.abs(errors)), "mae")
    assert mae["value"] == pytest.approx(float(np.abs(errors).mean()))
    rmse = summarize(vs("a", errors ** 2), "rmse")
    assert rmse["value"] == pytest.approx(math.sqrt(float((errors ** 2).mean())))
    assert 0 <= rmse["ci"][0] < rmse["value"] < rmse["ci"][1]
    acc = summarize(vs("a", [1, 1, 0, 1], requests=10, errors=2), "accuracy")
    assert acc["value"] == 0.75 and acc["error_rate"] == 0.2 and acc["requests"] == 10 and acc["labelled"] == 4
    assert 0.0 <= acc["ci"][0] and acc["ci"][1] <= 1.0  # clipped to the metric's range


def test_rmse_comparison_is_the_mse_test_rescaled() -> None:
    rng = np.random.default_rng(12)
    sq_c, sq_t = rng.normal(0, 1.0, 3000) ** 2, rng.normal(0, 0.9, 3000) ** 2
    r = compare(vs("control", sq_c), vs("b", sq_t), "rmse")
    m_c, m_t = sq_c.mean(), sq_t.mean()
    assert r["control_value"] == pytest.approx(math.sqrt(m_c))
    assert r["challenger_value"] == pytest.approx(math.sqrt(m_t))
    assert r["difference"] == pytest.approx(math.sqrt(m_t) - math.sqrt(m_c))
    assert r["mse_difference"] == pytest.approx(m_t - m_c)
    scale = math.sqrt(m_c) + math.sqrt(m_t)
    assert r["ci"] == pytest.approx([c / scale for c in r["mse_ci"]])
    mse = compare(vs("control", sq_c), vs("b", sq_t), "mae")  # the same numbers as a plain mean
    assert r["p_value"] == pytest.approx(mse["p_value"]) and r["mse_ci"] == pytest.approx(mse["ci"])
    assert r["decision"] == "challenger_better" and r["ci"][1] < 0
    # the delta method's standard error, at equal MSEs, is the rescaled one
    v = sq_c.var(ddof=1) / 3000 + sq_t.var(ddof=1) / 3000
    delta = sq_c.var(ddof=1) / 3000 / (4 * m_c) + sq_t.var(ddof=1) / 3000 / (4 * m_t)
    assert v / scale ** 2 == pytest.approx(delta, rel=0.05)


# --- tau --------------------------------------------------------------------------------------------------------------

def test_default_tau_and_its_effect() -> None:
    rng = np.random.default_rng(13)
    c, t = bernoulli("control", rng, 0.80, 2000), bernoulli("b", rng, 0.82, 2000)
    r = compare(c, t, "accuracy")
    p_c, p_t = c.metric_sum / 2000, t.metric_sum / 2000
    assert r["tau"] == pytest.approx(TAU_SCALE * math.sqrt((p_c * (1 - p_c) + p_t * (1 - p_t)) / 2))
    assert compare(c, t, "accuracy", tau=0.05)["tau"] == 0.05
    # for a given V the interval is narrowest near tau² = 8 V (alpha 0.05); smaller or larger tau is wider
    v = 1e-4
    widths = {k: cs_half_width(v, math.sqrt(k * v)) for k in (0.1, 1, 8, 64, 1000)}
    assert min(widths, key=widths.get) == 8
    assert widths[0.1] > widths[1] > widths[8] < widths[64] < widths[1000]
    # early (small n) a larger tau helps, late (large n) it costs
    small_n, large_n = 0.32 / 200, 0.32 / 200_000
    assert cs_half_width(small_n, 0.1) < cs_half_width(small_n, 0.01)
    assert cs_half_width(large_n, 0.1) > cs_half_width(large_n, 0.01)


# --- SRM --------------------------------------------------------------------------------------------------------------

def test_srm() -> None:
    ok = srm({"a": 9000, "b": 1000}, {"a": 90, "b": 10})
    assert ok["mismatch"] is False and ok["chi2"] == 0.0 and ok["p_value"] == pytest.approx(1.0)
    bad = srm({"a": 8500, "b": 1500}, {"a": 90, "b": 10})
    assert bad["mismatch"] is True and bad["p_value"] < 0.001
    ref = stats.chisquare([8500, 1500], [9000, 1000])
    assert bad["chi2"] == pytest.approx(ref.statistic) and bad["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    stray = srm({"a": 9000, "b": 1000, "c": 3}, {"a": 90, "b": 10, "c": 0})
    assert stray["mismatch"] is True and stray["unexpected"] == ["c"] and stray["p_value"] == pytest.approx(1.0)
    unknown = srm({"a": 9000, "b": 1000, "old": 5}, {"a": 90, "b": 10})
    assert unknown["mismatch"] is True and unknown["unexpected"] == ["old"]
    three = srm({"a": 5020, "b": 2490, "c": 2490}, {"a": 50, "b": 25, "c": 25})
    assert three["df"] == 2 and three["mismatch"] is False
    assert srm({"a": 100}, {"a": 100, "b": 0}) == {"chi2": None, "df": 0, "p_value": None, "expected": {"a": 100.0},
                                                    "unexpected": [], "threshold": 0.001, "mismatch": False}
    empty = srm({}, {"a": 50, "b": 50})
    assert empty["mismatch"] is False and empty["p_value"] is None
    plain(srm({"a": 0, "b": 7}, {"a": 0, "b": 0}))


# --- degenerate input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["accuracy", "logloss", "rmse", "mae"])
def test_edge_cases(metric: str) -> None:
    zero, one = vs("zero", n=0), vs("one", [1.0])
    const_a, const_b = vs("ca", [1.0] * 500), vs("cb", [0.0] * 500)
    huge = vs("huge", n=10 ** 15, total=8e14, total_sq=8e14)
    huge2 = vs("huge2", n=10 ** 15, total=8.0001e14, total_sq=8.0001e14)
    broken = VariantStats("broken", 0, -5, -1, 10, float("nan"), float("inf"), float("nan"), None, float("inf"))
    for s in (zero, one, const_a, const_b, huge, broken):
        out = summarize(s, metric)
        plain(out)
    assert summarize(zero, metric)["value"] is None and summarize(zero, metric)["ci"] is None
    assert summarize(zero, metric)["error_rate"] is None
    assert summarize(one, metric)["value"] == 1.0 and summarize(one, metric)["ci"] is None
    assert summarize(broken, metric)["value"] is None and summarize(broken, metric)["latency_p50_ms"] is None
    for a in (zero, one, const_a, const_b, huge, broken):
        for b in (zero, one, const_a, const_b, huge, huge2, broken):
            out = compare(a, b, metric)
            plain(out)
            if a.labelled < 100 or b.labelled < 100 or a is broken or b is broken:
                assert out["decision"] == "inconclusive_underpowered"
    assert compare(zero, one, metric)["p_value"] is None
    same = compare(const_a, vs("ca2", [1.0] * 500), metric)
    assert same["decision"] == "no_difference_yet" and same["p_value"] == 1.0
    assert compare(huge, huge2, metric)["p_value"] is not None


def test_zero_variance_accuracy_uses_laplace() -> None:
    r = compare(vs("control", [1.0] * 200), vs("b", [1.0] * 200), "accuracy")
    assert r["decision"] == "no_difference_yet" and r["ci"][0] < 0 < r["ci"][1]
    s = summarize(vs("a", [1.0] * 200), "accuracy")
    assert s["ci"][0] < 1.0 and s["ci"][1] == 1.0
    worse = compare(vs("control", [1.0] * 200), vs("b", [0.0] * 200), "accuracy")
    assert worse["decision"] == "control_better"


@settings(max_examples=150, deadline=None)
@given(n=st.tuples(st.integers(-3, 10 ** 12), st.integers(-3, 10 ** 12)),
       mean=st.tuples(st.floats(0, 1), st.floats(0, 1)),
       spread=st.tuples(st.floats(0, 3), st.floats(0, 3)),
       requests=st.integers(-1, 10 ** 12), metric=st.sampled_from(["accuracy", "logloss", "rmse", "mae"]),
       alpha=st.floats(0.001, 0.5), min_samples=st.integers(0, 1000))
def test_never_nan_never_raises(n: tuple[int, int], mean: tuple[float, float], spread: tuple[float, float],
                                requests: int, metric: str, alpha: float, min_samples: int) -> None:
    arms = []
    for k in range(2):
        m = round(mean[k]) if metric == "accuracy" and spread[k] > 2 else mean[k]
        total = n[k] * m
        total_sq = total if metric == "accuracy" else n[k] * (m * m + spread[k])
        arms.append(VariantStats(f"v{k}", 50, requests, 0, n[k], total, total_sq))
    plain(summarize(arms[0], metric, alpha=alpha))
    out = compare(arms[0], arms[1], metric, alpha=alpha, min_samples=min_samples)
    plain(out)
    assert out["decision"] in {"challenger_better", "control_better", "no_difference_yet", "inconclusive_underpowered"}
    if out["ci"] is not None and out["fixed_ci"] is not None and metric != "accuracy":
        assert out["ci"][0] <= out["fixed_ci"][0] and out["ci"][1] >= out["fixed_ci"][1]
