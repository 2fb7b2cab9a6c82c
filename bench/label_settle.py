"""What settling label sums costs a prediction insert (projections/telemetry/prediction_store.py).

A fresh chDB; labels for a tenth of 100 × 2,000 requests arrive before their predictions; then 50 prediction
batches of 2,000 rows go in through the raw insert alone (baseline: what an insert cost before labels could come
first) and 50 through `PredictionStore.insert_batches` (raw insert, then the settle of the requests that have a
label). Prints the medians and `ratio=` (insert_batches ÷ raw insert), and checks every early label counted.

    .venv/bin/python -m bench.label_settle
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from infra.clickhouse import connect
from projections.telemetry.prediction_store import PredictionStore
from tests.support.batches import T0, feedback, predictions

ROWS, BATCHES = 2000, 50


def main() -> None:
    ch = connect(None, Path(tempfile.mkdtemp()) / "chdb")
    store = PredictionStore(ch)
    store.ensure_schema()

    def batch(k: int):
        return predictions("d", [{"request_id": f"{k}-{i}", "ts_ms": T0 + i, "variant": "a", "p_yes": 0.7}
                                 for i in range(ROWS)])

    for k in range(BATCHES):
        store.insert_feedback([feedback("d", [(f"{k}-{i}", "yes") for i in range(0, ROWS, 10)], T0 + 10**6)])
    medians = {}
    for label, insert, first in (("raw insert only", lambda b: store._insert_predictions([b], b.batch_id), 1000),
                                 ("insert_batches (raw + settle)", lambda b: store.insert_batches([b], b.batch_id), 0)):
        times = []
        for k in range(BATCHES):
            b = batch(first + k)
            t = time.perf_counter()
            insert(b)
            times.append(time.perf_counter() - t)
        times.sort()
        medians[label] = times[len(times) // 2]
        print(f"{label}: median {medians[label] * 1000:.1f} ms per {ROWS:,}-row batch "
              f"(p90 {times[int(len(times) * 0.9)] * 1000:.1f} ms)")
    counted = ch.query("SELECT sum(accuracy_n) FROM label_minutes WHERE deployment = 'd'")[0][0]
    assert counted == BATCHES * ROWS // 10, counted
    print(f"every early label counted: {counted:,}")
    print(f"ratio={medians['insert_batches (raw + settle)'] / medians['raw insert only']:.2f}")


if __name__ == "__main__":
    main()
