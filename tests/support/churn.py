"""A small churn table with a text column, as a new user uploads one: `contract` is text with three values, some
numbers are missing, `customer_id` is an id the loader drops, `churn` is the label."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def churn_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    contract = rng.choice(["month", "year", "two_year"], size=n, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(0, 72, size=n).astype(float)
    charges = rng.normal(70, 20, size=n).round(2)
    risk = (contract == "month") * 1.5 - tenure / 40 + (charges - 70) / 40 + rng.normal(0, 0.5, size=n)
    tenure[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"customer_id": [f"c{i:04d}" for i in range(n)], "tenure": tenure,
                         "monthly_charges": charges, "contract": contract,
                         "churn": np.where(risk > 0.3, "yes", "no")})


def raw_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's feature rows as JSON objects a caller sends: keys in another order than the file's, no label,
    null for a missing cell."""
    rows = frame.drop(columns=["churn"]).to_dict("records")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in reversed(list(r.items()))}
            for r in rows]
