"""Peeking simulation for domain/ab_stats.py: the always-valid test (mSPRT, normal mixture) against the naive
fixed-horizon z-test looked at just as often.

    python -m bench.ab_sim [--sims 10000] [--step 100] [--max-n 10000] [--p0 0.80] [--p1 0.85] [--alpha 0.05]
                           [--tau TAU] [--seed 1]

Bernoulli arms (accuracy), equal allocation, a look after every `step` labelled predictions per arm up to `max-n`
(100 looks by default). The counts at the looks are cumulative sums of Binomial(step, p) draws, which is the same
distribution as counting individual predictions. Every look goes through `sequential_test`, the code `compare` uses.
- A/A (p0 vs p0): false-positive rate = share of experiments rejected at any look (always-valid: p ≤ α at some
  look, i.e. the running-minimum p ≤ α; naive: fixed-horizon z-test p ≤ α at some look); also the fixed-horizon
  test at the last look only (valid: about α).
- lift (p0 vs p1): power = share rejected (in the right direction) by max-n; stopping sample size per arm = the
  first look that rejects (median and 90th percentile among those that stop); for reference the naive test at the
  last look only, and the per-arm n a fixed-horizon design needs for 80% power.
Ends with one line for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.special import ndtri


from domain.ab_stats import sequential_test


def simulate(rng: np.random.Generator, sims: int, looks: int, step: int, p_c: float, p_t: float, alpha: float,
             tau: float | None, chunk: int = 2000) -> dict[str, np.ndarray]:
    """Per experiment: the first look index where each test rejects (-1: never), the sign of the difference there,
    and whether the fixed-horizon test rejects at the last look."""
    n = step * np.arange(1, looks + 1, dtype=float)
    out: dict[str, list[np.ndarray]] = {"av_first": [], "av_sign": [], "naive_first": [], "last": [], "last_sign": []}
    for start in range(0, sims, chunk):
        m = min(chunk, sims - start)
        x_c = rng.binomial(step, p_c, size=(m, looks)).cumsum(axis=1).astype(float)
        x_t = rng.binomial(step, p_t, size=(m, looks)).cumsum(axis=1).astype(float)
        r = sequential_test(n, x_c, x_c, n, x_t, x_t, "accuracy", alpha, tau)
        for key, rejected in (("av", r["p_value"] <= alpha), ("naive", r["fixed_p_value"] <= alpha)):
            first = np.where(rejected.any(axis=1), rejected.argmax(axis=1), -1)
            out[f"{key}_first"].append(first)
            if key == "av":
                out["av_sign"].append(np.sign(r["difference"][np.arange(m), np.maximum(first, 0)]))
        out["last"].append(r["fixed_p_value"][:, -1] <= alpha)
        out["last_sign"].append(np.sign(r["difference"][:, -1]))
    return {k: np.concatenate(v) for k, v in out.items()}


def share(x: np.ndarray) -> str:
    p = float(x.mean())
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / len(x))
    return f"{p:.4f} (±{half:.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=10000)
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--max-n", type=int, default=10000)
    ap.add_argument("--p0", type=float, default=0.80)
    ap.add_argument("--p1", type=float, default=0.85)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--tau", type=float, default=None, help="mixing scale (default: 0.1 x pooled sd, per look)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    looks = a.max_n // a.step
    rng = np.random.default_rng(a.seed)
    print(f"command: .venv/bin/python -m bench.ab_sim --sims {a.sims} --step {a.step} --max-n {a.max_n} --p0 {a.p0} "
          f"--p1 {a.p1} --alpha {a.alpha}{'' if a.tau is None else f' --tau {a.tau}'} --seed {a.seed}")
    print(f"{a.sims} experiments per scenario, looks every {a.step} per arm up to {looks * a.step} ({looks} looks), "
          f"alpha {a.alpha}, tau {'default (0.1 x pooled sd)' if a.tau is None else a.tau}, seed {a.seed}")
    t0 = time.perf_counter()

    aa = simulate(rng, a.sims, looks, a.step, a.p0, a.p0, a.alpha, a.tau)
    av_fpr, naive_fpr, last_fpr = aa["av_first"] >= 0, aa["naive_first"] >= 0, aa["last"]
    print(f"A/A {a.p0} vs {a.p0}: false-positive rate, rejected at any look:")
    print(f"  always-valid (mSPRT)           {share(av_fpr)}")
    print(f"  naive fixed-horizon z, peeked  {share(naive_fpr)}")
    print(f"  fixed-horizon z, last look only {share(last_fpr)}")

    ab = simulate(rng, a.sims, looks, a.step, a.p0, a.p1, a.alpha, a.tau)
    right = np.sign(a.p1 - a.p0)
    stopped = (ab["av_first"] >= 0) & (ab["av_sign"] == right)
    wrong = (ab["av_first"] >= 0) & (ab["av_sign"] != right)
    stop_n = (ab["av_first"][stopped] + 1) * a.step
    median = float(np.median(stop_n)) if stop_n.size else float("nan")
    p90 = float(np.percentile(stop_n, 90)) if stop_n.size else float("nan")
    last_power = ab["last"] & (ab["last_sign"] == right)
    var = a.p0 * (1 - a.p0) + a.p1 * (1 - a.p1)
    fixed_n = math.ceil((float(ndtri(1 - a.alpha / 2)) + float(ndtri(0.8))) ** 2 * var / (a.p1 - a.p0) ** 2)
    print(f"lift {a.p0} -> {a.p1}:")
    print(f"  always-valid power by {looks * a.step}/arm   {share(stopped)}  (wrong direction: {int(wrong.sum())})")
    print(f"  stopping n per arm: median {median:,.0f}, 90th percentile {p90:,.0f}")
    print(f"  fixed-horizon z at {looks * a.step}/arm only: power {share(last_power)}; "
          f"a fixed-horizon design needs {fixed_n:,}/arm for 80% power")
    seconds = time.perf_counter() - t0
    print(f"elapsed {seconds:.1f} s")
    print(f"summary: ab_sim {a.sims} sims x {looks} looks (every {a.step} to {looks * a.step}/arm, alpha {a.alpha}): "
          f"A/A false positives always-valid {av_fpr.mean():.3f} vs naive peeked {naive_fpr.mean():.3f} "
          f"(last look only {last_fpr.mean():.3f}); lift {a.p0}->{a.p1}: power {stopped.mean():.3f}, "
          f"median stop {median:,.0f}/arm (fixed-horizon 80% power: {fixed_n:,}/arm); {seconds:.1f} s")


if __name__ == "__main__":
    main()
