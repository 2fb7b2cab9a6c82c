"""Per-request routing of a deployment's traffic over its variants: pure and fast (a few microseconds a call).

A `Router` is built once per deployment revision (from `Deployment.snapshot()`); `choose(key)` then picks a
variant name for each request:
- without a key: at random by weight;
- with a key (a user or session id): deterministically, so the same key always gets the same variant within a
  revision. blake2b of (deployment name, revision, key) gives a point in [0, 100) with a resolution of 0.01,
  which falls into the cumulative weight table. The revision is part of the hash, so keys are dealt afresh
  when the weights change; the share of keys on each variant follows the weights.
Variants with weight 0 are never chosen.
"""
from __future__ import annotations

import random as _random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from hashlib import blake2b
from typing import Any

_RESOLUTION = 100  # points per unit of weight: 0.01 of a percent


class Router:
    __slots__ = ("name", "revision", "weights", "_names", "_bounds", "_span", "_prefix", "_only", "_random")

    def __init__(self, name: str, revision: int, variants: Iterable[tuple[str, int] | Mapping[str, Any]],
                 rng: _random.Random | None = None) -> None:
        """`variants`: (name, weight) pairs or variant dicts (with "name" and "weight"); integer weights >= 0
        with a positive total (100 for a deployment). `rng`: the source of keyless choices (default: the
        `random` module's)."""
        pairs: list[tuple[str, int]] = []
        for v in variants:
            n, w = (v["name"], v["weight"]) if isinstance(v, Mapping) else v
            if not isinstance(w, int) or isinstance(w, bool) or w < 0:
                raise ValueError(f"variant {n!r}: weight must be an integer >= 0, not {w!r}")
            pairs.append((str(n), w))
        if len({n for n, _ in pairs}) != len(pairs):
            raise ValueError("variant names must be unique")
        total = sum(w for _, w in pairs)
        if total <= 0:
            raise ValueError(f"deployment {name}: no variant has a positive weight")
        self.name = name
        self.revision = revision
        self.weights = dict(pairs)
        names, bounds, acc = [], [], 0
        for n, w in pairs:
            if w > 0:
                acc += w * _RESOLUTION
                names.append(n)
                bounds.append(acc)  # variant i holds the points in [bounds[i-1], bounds[i])
        self._names = tuple(names)
        self._bounds = tuple(bounds)
        self._span = acc
        self._only = names[0] if len(names) == 1 else None
        self._prefix = f"{name}\x00{revision}\x00".encode()
        self._random = (rng or _random).random

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], rng: _random.Random | None = None) -> Router:
        return cls(snapshot["name"], snapshot["revision"], snapshot["variants"], rng=rng)

    def point(self, key: str) -> int:
        """The key's point in [0, total weight * 100) for this deployment and revision."""
        digest = blake2b(self._prefix + key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self._span

    def choose(self, key: str | None = None) -> str:
        """The variant for a request: sticky by `key` within the revision, else random by weight."""
        if self._only is not None:
            return self._only
        if key is None:
            p = int(self._random() * self._span)
        else:
            p = int.from_bytes(blake2b(self._prefix + key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                               "big") % self._span
        return self._names[bisect_right(self._bounds, p)]

    def __repr__(self) -> str:
        return f"Router({self.name!r}, {self.revision}, {self.weights})"
