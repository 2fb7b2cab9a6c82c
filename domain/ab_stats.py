"""Online A/B statistics from per-variant sufficient statistics: always-valid (sequential) inference and an SRM check.

Pure (no I/O). Input: one `VariantStats` per variant, as one ClickHouse GROUP BY returns it
(projections/telemetry/ab_queries.py): requests, errors, latency quantiles, and for the labelled predictions n, Σx and Σx²
of the per-prediction metric value x:
- accuracy: x = 1 if correct else 0 (higher is better);
- logloss:  x = −log p(true label), clipped (lower is better);
- mae:      x = |error| (lower is better);
- rmse:     x = squared error, so the mean is the MSE and the reported value is √MSE (lower is better).
AUC is not a mean of per-prediction values and the statistics carry no rank sums: it is not supported (ValueError).

Method: mixture sequential probability ratio test (mSPRT) with a normal mixing distribution, Johari, Koomen,
Pekelis, Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations Research 2022;
arXiv 1512.04922), on the large-sample normal approximation of the means.

Per arm i (n_i labelled): mean m_i = Σx/n; variance: for accuracy p(1−p) = Σx/n − m², so the fixed-horizon interval
below is the textbook Wald two-proportion interval; for the other metrics the unbiased s² = (Σx² − n m²)/(n − 1), so
it is the unequal-variance z interval for two means (statsmodels' CompareMeans(usevar="unequal")). Comparison
(challenger t minus control c):

    δ̂ = m_t − m_c,    V = s_c²/n_c + s_t²/n_t     (unpooled variance of δ̂;  δ̂ ≈ N(δ, V))

Mixing over the alternative θ ~ N(δ0, τ²), the likelihood ratio of H0: δ = δ0 at the current look is

    Λ(δ0) = ∫ φ_V(δ̂ − θ) φ_τ²(θ − δ0) dθ / φ_V(δ̂ − δ0) = φ_{V+τ²}(δ̂ − δ0) / φ_V(δ̂ − δ0)
          = sqrt(V / (V + τ²)) · exp( τ² (δ̂ − δ0)² / (2 V (V + τ²)) )

Under H0, Λ_n is (asymptotically) a non-negative martingale with mean 1, so by Ville's inequality
P(∃ n: Λ_n ≥ 1/α) ≤ α: rejecting at the first look where Λ ≥ 1/α keeps the type-I error ≤ α however often one looks.
- always-valid p-value (this look): p = min(1, 1/Λ(0)). The always-valid p-value proper is the running minimum over
  looks; this module is stateless, so `compare` returns the current look's value and a caller that wants the
  running version keeps min(p) itself (`always_valid_p` is exposed for that). Rejecting when p ≤ α at any look is
  the same test either way.
- confidence sequence: {δ0 : Λ(δ0) < 1/α}, solved for δ0 in closed form:

      δ̂ ± sqrt( V (V + τ²)/τ² · ( 2 log(1/α) + log((V + τ²)/V) ) )

  It covers δ at every look simultaneously with probability ≥ 1 − α (a caller may intersect the intervals it has
  seen). 0 lies outside it exactly when p ≤ α, so the interval and the decision never disagree. It is always wider
  than the fixed-horizon interval δ̂ ± z_{1−α/2} √V, since z²_{1−α/2} ≤ 2 log(1/α) — the price of peeking.
- single-variant intervals (`summarize`): the same formula with V = s²/n around the mean.

τ (the scale of effects the test is tuned for): default τ = 0.1 × the pooled within-arm standard deviation
(a "small" standardized effect, Cohen's d = 0.1; for accuracy near 0.8 that is τ ≈ 0.04). For a given V the interval
is narrowest at τ² ≈ 8V (α = 0.05), i.e. the default is tuned for about 1,600 labelled per arm (800 for a single
variant); a smaller τ is tighter later and looser early, a larger τ the reverse; validity holds for any fixed τ.
Pass `tau` (in units of the tested mean: MSE units for rmse) to fix it in advance; the default follows the pooled sd
of the current look, which settles quickly, so it is (asymptotically) fixed too.

rmse: the test runs on the MSE difference (the mean of the per-prediction values, where the normal approximation
applies). `difference` = √m_t − √m_c, and its intervals are the MSE intervals divided by (√m_c + √m_t): exact for the
point (m_t − m_c = (√m_t − √m_c)(√m_t + √m_c)), equal to the delta method's variance when the two MSEs are equal,
and consistent with the MSE test's decision. The MSE figures are also given (`mse_difference`, `mse_ci`).

Degenerate cases (no NaN/inf ever returned; None where undefined): n = 0 → no value; n < 2 → no interval and no
p-value; zero variance: for accuracy (all right or all wrong) the Laplace estimate p̃ = (x+1)/(n+2) gives the variance
p̃(1−p̃); for the other metrics the arm contributes 0 to V, and when V = 0 on both sides the interval is the point and
p = 1 if δ̂ = 0 else 0. Intervals are clipped to the metric's range (a variant's value: [0, 1] for accuracy, ≥ 0 for
the others; an accuracy difference: [−1, 1]).

What the figures mean, and what is not covered:
- `decision`: "inconclusive_underpowered" when either side has fewer than `min_samples` labelled (or fewer than 2);
  "challenger_better"/"control_better" when the always-valid p ≤ α, by the sign of δ̂ and the metric's direction;
  else "no_difference_yet" (not evidence of equality: the test may still reject later).
- `fixed_ci`, `fixed_p_value`: the classic z interval/test (unpooled) for one look at a horizon fixed in advance;
  for reference only — peeking at them inflates false positives (see bench/ab_sim.py).
- Not covered: the exact guarantee assumes i.i.d. predictions and a stable allocation ratio between the arms;
  weight changes mid-experiment (ramps) with a metric that drifts over time can bias the pooled comparison
  (Simpson's paradox); novelty effects; multiple challengers (no correction across comparisons); the SRM check is a
  fixed-horizon chi-square (its small default threshold, 0.001, keeps repeated looks from raising many false alarms,
  but it is not a sequential test); AUC; ratio metrics; variance reduction (CUPED).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import chdtrc, erfc, ndtri

from domain.vocabulary import HIGHER_IS_BETTER, AbMetric

TAU_SCALE = 0.1  # default τ = TAU_SCALE × pooled standard deviation of the per-prediction values
METHOD = "mSPRT, normal mixture N(0, tau^2) (Johari et al., always valid inference)"
_NOISE = 1e-13  # a variance below _NOISE × mean² is floating-point cancellation in Σx²/n − m², taken as 0

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class VariantStats:
    name: str
    weight: int              # configured weight 0..100 in the revision(s) observed
    requests: int            # predictions served
    errors: int              # responses with an error status (the caller decides which)
    labelled: int            # predictions that got feedback: n for the metric
    metric_sum: float        # Σ of the per-prediction metric value over the labelled predictions
    metric_sum_sq: float     # Σ of its square
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None


def higher_is_better(metric: str) -> bool:
    """True for accuracy, False for logloss, rmse, mae; ValueError for anything else (auc included)."""
    if metric not in tuple(AbMetric):
        raise ValueError(f"metric must be one of {', '.join(AbMetric)}, not {metric!r}")
    return HIGHER_IS_BETTER[metric]


# ---------------------------------------------------------------------------------------------------------------
# Array-friendly core (scalars or numpy arrays, broadcast): the report and the simulations use the same code.

def arm_moments(n: ArrayLike, total: ArrayLike, total_sq: ArrayLike, metric: str) -> tuple[Any, Any]:
    """(mean, variance) of the per-prediction values from n, Σx, Σx² (NaN where undefined: mean for n < 1,
    variance for n < 2). accuracy: p(1−p) (divisor n), and p̃(1−p̃), p̃ = (x+1)/(n+2), when that is 0;
    other metrics: the unbiased s² (divisor n − 1)."""
    higher_is_better(metric)
    n, total, total_sq = (np.asarray(a, dtype=float) for a in (n, total, total_sq))
    with np.errstate(all="ignore"):
        mean = np.where(n >= 1, total / n, np.nan)
        var = np.maximum(total_sq / n - mean * mean, 0.0)
        var = np.where(var <= _NOISE * mean * mean, 0.0, var)
        if metric == "accuracy":
            pt = (total + 1.0) / (n + 2.0)
            var = np.where(var == 0.0, pt * (1.0 - pt), var)
        else:
            var = var * n / (n - 1.0)
        var = np.where(n >= 2, var, np.nan)
    return mean, var


def default_tau(sd: ArrayLike) -> Any:
    """The default mixing scale: TAU_SCALE × the (pooled) standard deviation of the per-prediction values."""
    return TAU_SCALE * np.asarray(sd, dtype=float)


def always_valid_p(estimate: ArrayLike, variance: ArrayLike, tau: ArrayLike, null: ArrayLike = 0.0) -> Any:
    """mSPRT p-value of H0: mean (difference) = `null` at one look: min(1, 1/Λ), Λ as in the module docstring.
    The always-valid p-value over a sequence of looks is the running minimum of these: keep it with
    `p = min(p, always_valid_p(...))`. variance = 0: 1 if estimate == null else 0. NaN where inputs are undefined."""
    d, v, t = (np.asarray(a, dtype=float) for a in (estimate, variance, tau))
    d = d - np.asarray(null, dtype=float)
    with np.errstate(all="ignore"):
        r = t * t / v                                    # τ²/V
        log_lambda = 0.5 * (d * d / v * (r / (1.0 + r)) - np.log1p(r))
        p = np.minimum(1.0, np.exp(-log_lambda))
        p = np.where(v == 0.0, np.where(d == 0.0, 1.0, 0.0), p)
    return _out(p)


def cs_half_width(variance: ArrayLike, tau: ArrayLike, alpha: float = 0.05) -> Any:
    """Half-width of the (1−α) confidence sequence: sqrt( V(V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V)) )."""
    v, t = np.asarray(variance, dtype=float), np.asarray(tau, dtype=float)
    with np.errstate(all="ignore"):
        r = t * t / v
        h = np.sqrt(v * (1.0 + 1.0 / r) * (2.0 * math.log(1.0 / alpha) + np.log1p(r)))
        h = np.where(v == 0.0, 0.0, h)
    return _out(h)


def confidence_sequence(estimate: ArrayLike, variance: ArrayLike, tau: ArrayLike,
                        alpha: float = 0.05) -> tuple[Any, Any]:
    """(low, high) of the always-valid (1−α) interval: every δ0 the mSPRT of H0: δ = δ0 does not reject."""
    h = cs_half_width(variance, tau, alpha)
    return _out(np.asarray(estimate, dtype=float) - h), _out(np.asarray(estimate, dtype=float) + h)


def fixed_horizon(estimate: ArrayLike, variance: ArrayLike, alpha: float = 0.05) -> tuple[Any, Any, Any]:
    """(low, high, p) of the classic z interval and two-sided z-test at one pre-set look."""
    d, v = np.asarray(estimate, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(all="ignore"):
        h = float(ndtri(1.0 - alpha / 2.0)) * np.sqrt(v)
        p = np.where(v == 0.0, np.where(d == 0.0, 1.0, 0.0), erfc(np.abs(d) / np.sqrt(2.0 * v)))
    return _out(d - h), _out(d + h), _out(p)


def sequential_test(n_c: ArrayLike, sum_c: ArrayLike, sumsq_c: ArrayLike, n_t: ArrayLike, sum_t: ArrayLike,
                    sumsq_t: ArrayLike, metric: str, alpha: float = 0.05,
                    tau: ArrayLike | None = None) -> dict[str, Any]:
    """The comparison's numbers from the two arms' (n, Σx, Σx²), vectorized (e.g. over experiments × looks):
    difference of the means (t − c; MSE for rmse), its variance V, τ, the always-valid p, the confidence sequence
    and the fixed-horizon interval and p. NaN where undefined."""
    m_c, v_c = arm_moments(n_c, sum_c, sumsq_c, metric)
    m_t, v_t = arm_moments(n_t, sum_t, sumsq_t, metric)
    n_c, n_t = np.asarray(n_c, dtype=float), np.asarray(n_t, dtype=float)
    with np.errstate(all="ignore"):
        diff = m_t - m_c
        var = v_c / n_c + v_t / n_t
        if tau is None:
            tau = default_tau(np.sqrt((n_c * v_c + n_t * v_t) / (n_c + n_t)))
    lo, hi = confidence_sequence(diff, var, tau, alpha)
    f_lo, f_hi, f_p = fixed_horizon(diff, var, alpha)
    return {"control_mean": _out(m_c), "challenger_mean": _out(m_t), "difference": _out(diff), "variance": _out(var),
            "tau": _out(np.asarray(tau, dtype=float)), "p_value": always_valid_p(diff, var, tau), "ci_low": lo,
            "ci_high": hi, "fixed_ci_low": f_lo, "fixed_ci_high": f_hi, "fixed_p_value": f_p}


def _out(a: Any) -> Any:
    a = np.asarray(a, dtype=float)
    return float(a) if a.ndim == 0 else a


# ---------------------------------------------------------------------------------------------------------------
# The report

def _num(x: Any) -> float | None:
    """A finite Python float, or None."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _interval(lo: Any, hi: Any, low_bound: float | None = None, high_bound: float | None = None) -> list[float] | None:
    lo, hi = _num(lo), _num(hi)
    if lo is None or hi is None:
        return None
    if low_bound is not None:
        lo, hi = max(lo, low_bound), max(hi, low_bound)
    if high_bound is not None:
        lo, hi = min(lo, high_bound), min(hi, high_bound)
    return [lo, hi]


def _sums(s: VariantStats) -> tuple[int, float, float]:
    """(n, Σx, Σx²) with unusable input (negative n, non-finite sums) read as no labelled data."""
    n = int(s.labelled) if s.labelled and s.labelled > 0 else 0
    total, total_sq = _num(s.metric_sum), _num(s.metric_sum_sq)
    if total is None or total_sq is None:
        return 0, 0.0, 0.0
    return n, total, total_sq


def _check(alpha: float, tau: float | None) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    if tau is not None and not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive number, not {tau!r}")


def _sqrt(x: float | None) -> float | None:
    return None if x is None else math.sqrt(max(x, 0.0))


def summarize(stats: VariantStats, metric: str, alpha: float = 0.05, tau: float | None = None) -> dict[str, Any]:
    """One variant's figures:
    name, metric, higher_is_better, requests, errors, error_rate (None without requests), labelled,
    latency_p50_ms / latency_p95_ms / latency_p99_ms, value (the mean; √MSE for rmse; None without labelled),
    sd (of the per-prediction values; None for n < 2), ci ([low, high], the always-valid 1−α interval of value;
    None for n < 2), fixed_ci (the classic z interval, for reference), confidence (1 − α), tau, method."""
    hib = higher_is_better(metric)
    _check(alpha, tau)
    n, total, total_sq = _sums(stats)
    mean, var = arm_moments(n, total, total_sq, metric)
    mean, var = _num(mean), _num(var)
    requests = max(int(stats.requests or 0), 0)
    errors = max(int(stats.errors or 0), 0)
    ci = fixed = None
    tau_used = None
    if mean is not None and var is not None:
        v = var / n
        tau_used = _num(tau if tau is not None else default_tau(math.sqrt(var)))
        lo, hi = confidence_sequence(mean, v, tau_used if tau_used else 0.0, alpha)
        f_lo, f_hi, _ = fixed_horizon(mean, v, alpha)
        bounds = (0.0, 1.0) if metric == "accuracy" else (0.0, None)
        ci, fixed = _interval(lo, hi, *bounds), _interval(f_lo, f_hi, *bounds)
        if metric == "rmse":
            ci = None if ci is None else [math.sqrt(ci[0]), math.sqrt(ci[1])]
            fixed = None if fixed is None else [math.sqrt(fixed[0]), math.sqrt(fixed[1])]
    value = _sqrt(mean) if metric == "rmse" else mean
    return {"name": stats.name, "metric": metric, "higher_is_better": hib, "requests": requests, "errors": errors,
            "error_rate": (errors / requests) if requests else None, "labelled": n,
            "latency_p50_ms": _num(stats.latency_p50_ms), "latency_p95_ms": _num(stats.latency_p95_ms),
            "latency_p99_ms": _num(stats.latency_p99_ms), "value": value,
            "sd": _sqrt(var), "ci": ci, "fixed_ci": fixed, "confidence": 1.0 - alpha, "tau": tau_used,
            "method": METHOD}


def compare(control: VariantStats, challenger: VariantStats, metric: str, alpha: float = 0.05,
            min_samples: int = 100, tau: float | None = None) -> dict[str, Any]:
    """Challenger against control on `metric`:
    metric, higher_is_better, control, challenger (names), n_control, n_challenger (labelled), control_value,
    challenger_value (√MSE for rmse), difference (challenger − control in the metric's units), relative_difference
    (difference / control_value), ci ([low, high]: always-valid 1−α interval of the difference), p_value (always-valid,
    this look), decision, fixed_ci and fixed_p_value (classic z, one pre-set look: reference only), alpha,
    confidence, min_samples, tau (in units of the tested mean), method; for rmse also mse_difference and mse_ci.
    Numbers are None where undefined. `tau` > 0 fixes the mixing scale (default: TAU_SCALE × pooled sd)."""
    hib = higher_is_better(metric)
    _check(alpha, tau)
    n_c, s_c, ss_c = _sums(control)
    n_t, s_t, ss_t = _sums(challenger)
    r = sequential_test(n_c, s_c, ss_c, n_t, s_t, ss_t, metric, alpha, tau)
    m_c, m_t, diff = _num(r["control_mean"]), _num(r["challenger_mean"]), _num(r["difference"])
    p = _num(r["p_value"]) if _num(r["variance"]) is not None else None
    ci = _interval(r["ci_low"], r["ci_high"]) if p is not None else None
    fixed = _interval(r["fixed_ci_low"], r["fixed_ci_high"]) if p is not None else None
    fixed_p = _num(r["fixed_p_value"]) if p is not None else None
    extra: dict[str, Any] = {}
    if metric == "rmse":
        extra = {"mse_difference": diff, "mse_ci": ci}
        if m_c is not None and m_t is not None:
            root_c, root_t = _sqrt(m_c), _sqrt(m_t)
            scale = root_c + root_t
            diff = root_t - root_c
            ci = None if ci is None else ([diff, diff] if scale == 0 else [c / scale for c in ci])
            fixed = None if fixed is None else ([diff, diff] if scale == 0 else [c / scale for c in fixed])
            m_c, m_t = root_c, root_t
    elif metric == "accuracy":
        ci, fixed = _interval(*(ci or (None, None)), -1.0, 1.0), _interval(*(fixed or (None, None)), -1.0, 1.0)
    if p is None or n_c < max(min_samples, 2) or n_t < max(min_samples, 2):
        decision = "inconclusive_underpowered"
    elif p <= alpha and diff is not None and diff != 0:
        decision = "challenger_better" if (diff > 0) == hib else "control_better"
    else:
        decision = "no_difference_yet"
    return {"metric": metric, "higher_is_better": hib, "control": control.name, "challenger": challenger.name,
            "n_control": n_c, "n_challenger": n_t, "control_value": m_c, "challenger_value": m_t,
            "difference": diff,
            "relative_difference": _num(diff / m_c) if diff is not None and m_c else None,
            "ci": ci, "p_value": p, "decision": decision, "fixed_ci": fixed, "fixed_p_value": fixed_p,
            "alpha": alpha, "confidence": 1.0 - alpha, "min_samples": min_samples,
            "tau": _num(r["tau"]) if p is not None else None, "method": METHOD, **extra}


def srm(observed: Mapping[str, int], weights: Mapping[str, int], threshold: float = 0.001) -> dict[str, Any]:
    """Sample-ratio mismatch: chi-square goodness of fit of the requests per variant against the configured weights.
    Variants with weight 0 (or no weight) are left out of the test, but any traffic to them is a mismatch
    (`unexpected`). Returns chi2, df, p_value (None when fewer than two variants have weight > 0 or none of them has
    traffic), expected (requests per weighted variant), unexpected (names), threshold and mismatch
    (p_value < threshold, or unexpected traffic)."""
    names = list(dict.fromkeys([*weights, *observed]))
    obs = {k: max(int(observed.get(k, 0) or 0), 0) for k in names}
    w = {k: max(int(weights.get(k, 0) or 0), 0) for k in names}
    tested = [k for k in names if w[k] > 0]
    unexpected = [k for k in names if w[k] == 0 and obs[k] > 0]
    total = sum(obs[k] for k in tested)
    weight_total = sum(w[k] for k in tested)
    expected = {k: total * w[k] / weight_total for k in tested} if weight_total else {}
    chi2 = p = None
    df = len(tested) - 1
    if df >= 1 and total > 0:
        chi2 = float(sum((obs[k] - expected[k]) ** 2 / expected[k] for k in tested))
        p = _num(chdtrc(df, chi2))
    mismatch = bool(unexpected) or (p is not None and p < threshold)
    return {"chi2": chi2, "df": max(df, 0), "p_value": p, "expected": expected, "unexpected": unexpected,
            "threshold": threshold, "mismatch": mismatch}
