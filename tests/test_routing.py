"""Routing: keyless requests split by weight, keyed requests stick to a variant within a revision, and the
share of keys on each variant follows the weights."""
from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest

from domain.deployment import Deployment
from domain.routing import Router

try:
    from scipy.stats import chisquare as _scipy_chisquare
except ImportError:  # pragma: no cover - scipy is optional
    _scipy_chisquare = None

CONFIGS = [
    {"a": 90, "b": 10},
    {"a": 50, "b": 50},
    {"a": 0, "b": 100},
    {"a": 20, "b": 30, "c": 50},
    {"a": 1, "b": 0, "c": 99},
    {"a": 25, "b": 25, "c": 25, "d": 25},
]


def chi_square_p(observed: list[int], expected: list[float]) -> float:
    """p of Pearson's chi-square goodness of fit (scipy when installed, else the regularized gamma by hand)."""
    if _scipy_chisquare is not None:
        return float(_scipy_chisquare(observed, expected).pvalue)
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    return _chi2_sf(stat, len(observed) - 1)


def _chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution: Q(dof/2, x/2) by series / continued fraction."""
    if dof <= 0:
        return 1.0
    a, x = dof / 2, x / 2
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P, Q = 1 - P
        term = total = 1 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1 - total * math.exp(log_front))
    b, c, d = x + 1 - a, 1 / 1e-300, 1 / (x + 1 - a)  # Lentz's continued fraction for Q
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def test_the_hand_chi_square_matches_known_values() -> None:
    assert _chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert _chi2_sf(9.21034037197618, 2) == pytest.approx(0.01, rel=1e-6)
    assert _chi2_sf(16.26623619623813, 3) == pytest.approx(0.001, rel=1e-6)
    assert _chi2_sf(1.0, 4) == pytest.approx(0.9097959895689501, rel=1e-6)


def fits(counts: Counter, weights: dict[str, int], n: int) -> float:
    """p of the counts against the weights; variants with weight 0 must have no count at all."""
    for name, w in weights.items():
        if w == 0:
            assert counts[name] == 0, f"variant {name} has weight 0 but got {counts[name]} requests"
    assert set(counts) <= set(weights)
    live = [name for name, w in weights.items() if w > 0]
    if len(live) == 1:
        assert counts[live[0]] == n
        return 1.0
    return chi_square_p([counts[name] for name in live], [n * weights[name] / 100 for name in live])


@pytest.mark.parametrize("weights", CONFIGS, ids=lambda w: "/".join(map(str, w.values())))
def test_keyless_requests_split_by_weight(weights: dict[str, int]) -> None:
    router = Router("fraud", 3, list(weights.items()), rng=random.Random(20240611))
    n = 100_000
    counts = Counter(router.choose() for _ in range(n))
    assert fits(counts, weights, n) > 0.001


def test_the_module_random_is_the_default_source() -> None:
    router = Router("fraud", 1, [("a", 50), ("b", 50)])
    random.seed(7)
    first = [router.choose() for _ in range(50)]
    random.seed(7)
    assert [router.choose() for _ in range(50)] == first and set(first) == {"a", "b"}


@pytest.mark.parametrize("weights", CONFIGS, ids=lambda w: "/".join(map(str, w.values())))
def test_keys_stick_to_a_variant_within_a_revision(weights: dict[str, int]) -> None:
    variants = [{"name": n, "model": "m", "version": 1, "weight": w, "artifact": {}} for n, w in weights.items()]
    router = Router("fraud", 7, variants, rng=random.Random(1))
    keys = [f"user-{i}" for i in range(10_000)]
    first = [router.choose(k) for k in keys]
    assert [router.choose(k) for k in keys] == first
    again = Router("fraud", 7, list(weights.items()), rng=random.Random(2))  # a fresh router, other randomness
    assert [again.choose(k) for k in keys] == first
    assert fits(Counter(first), weights, len(keys)) > 0.001  # the share of keys follows the weights


def test_a_keys_variant_can_change_across_revisions_and_follows_the_new_weights() -> None:
    keys = [f"session-{i:05d}" for i in range(10_000)]
    old = Router("fraud", 1, [("champion", 90), ("challenger", 10)])
    new = Router("fraud", 2, [("champion", 50), ("challenger", 50)])
    before = [old.choose(k) for k in keys]
    after = [new.choose(k) for k in keys]
    moved = sum(b != a for b, a in zip(before, after))
    assert 0 < moved < len(keys)
    assert fits(Counter(after), {"champion": 50, "challenger": 50}, len(keys)) > 0.001
    same_weights = Router("fraud", 3, [("champion", 50), ("challenger", 50)])  # a new revision deals afresh
    assert [same_weights.choose(k) for k in keys] != after
    other_deployment = Router("payments", 2, [("champion", 50), ("challenger", 50)])
    assert [other_deployment.choose(k) for k in keys] != after


def test_a_router_from_a_deployment_snapshot() -> None:
    d = Deployment.create("fraud", [
        {"name": "champion", "model": "gbm", "version": 1, "weight": 0, "artifact": {}},
        {"name": "challenger", "model": "gbm", "version": 2, "weight": 100, "artifact": {}}], project="default")
    router = Router.from_snapshot(d.snapshot())
    assert (router.name, router.revision, router.weights) == ("fraud", 1, {"champion": 0, "challenger": 100})
    assert {router.choose(f"k{i}") for i in range(1000)} | {router.choose() for _ in range(1000)} == {"challenger"}
    assert router.point("k1") == router.point("k1") and 0 <= router.point("k1") < 10_000


@pytest.mark.parametrize("variants", [[], [("a", 0)], [("a", -1), ("b", 101)], [("a", 50), ("a", 50)],
                                      [("a", 50.0), ("b", 50)], [("a", True), ("b", 99)]])
def test_an_unroutable_table_is_refused(variants: list) -> None:
    with pytest.raises(ValueError):
        Router("fraud", 1, variants)


def test_choose_costs_a_few_microseconds() -> None:
    router = Router("fraud-scoring", 12, [("a", 70), ("b", 20), ("c", 10)])
    keys = [f"user-{i}" for i in range(20_000)]
    for _ in range(3):  # best of three: the machine may be busy
        t0 = time.perf_counter()
        for k in keys:
            router.choose(k)
        keyed = (time.perf_counter() - t0) / len(keys)
        t0 = time.perf_counter()
        for _ in keys:
            router.choose()
        keyless = (time.perf_counter() - t0) / len(keys)
        if keyed < 20e-6 and keyless < 20e-6:
            break
    assert keyed < 20e-6 and keyless < 20e-6, f"keyed {keyed * 1e6:.2f} us, keyless {keyless * 1e6:.2f} us"
