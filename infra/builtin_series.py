"""Builtin time series, generated deterministically (no download): `builtin://demand`.

`demand`: daily demand of 4 stores over 3 years (2022-01-01 on): a level per store, a slow trend, weekly and yearly
seasonality, a promotion flag (10% of days, +30% demand) and Gaussian noise (sd 4), from a fixed seed. Columns
`date` (YYYY-MM-DD), `store` (store_0..store_3), `promo` (0/1), `demand`.
"""
from __future__ import annotations

import functools

import numpy as np

BUILTIN_FORECAST = {"demand": {"time_column": "date", "series_column": "store", "target": "demand", "season": 7}}


@functools.cache
def demand_frame():  # pandas.DataFrame: builtin://demand (shared: copy before changing it)
    import pandas as pd

    rng = np.random.default_rng(20240101)
    days = pd.date_range("2022-01-01", periods=3 * 365, freq="D")
    t = np.arange(len(days))
    parts = []
    for store in range(4):
        level = 80 + 30 * store
        weekly = np.array([0.8, 0.9, 0.95, 1.0, 1.15, 1.4, 1.2])[days.day_of_week]
        yearly = 1 + 0.25 * np.sin(2 * np.pi * (t - 80) / 365.25)
        promo = (rng.random(len(days)) < 0.1).astype(float)
        demand = level * (1 + 0.0004 * t) * weekly * yearly * (1 + 0.3 * promo) + rng.normal(0, 4, len(days))
        parts.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "store": f"store_{store}", "promo": promo,
                                   "demand": np.round(np.maximum(demand, 0), 2)}))
    return pd.concat(parts, ignore_index=True)
