"""Prediction and feedback batches as the inference server and the feedback route publish them, from short rows."""
from __future__ import annotations

import uuid
from typing import Any

from domain.contract import FeedbackBatch, PredictionBatch

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CLASSES = ["no", "yes"]


def predictions(deployment: str, rows: list[dict[str, Any]], batch_id: str | None = None) -> PredictionBatch:
    """rows: request_id, ts_ms, variant, p_yes (None: a 500 without outputs), optional shadow, revision, latency_us."""
    ok = [r.get("p_yes") is not None for r in rows]
    return PredictionBatch(
        batch_id=batch_id or f"b-{uuid.uuid4().hex}", server_id="inference-test",
        ts_ms=[r["ts_ms"] for r in rows], request_id=[r["request_id"] for r in rows],
        deployment=[deployment] * len(rows), revision=[r.get("revision", 1) for r in rows],
        variant=[r["variant"] for r in rows], model=["m"] * len(rows), version=[1] * len(rows),
        status=[200 if k else 500 for k in ok], latency_us=[r.get("latency_us", 1000) for r in rows],
        n_rows=[1] * len(rows), shadow=[r.get("shadow", False) for r in rows],
        prediction=[("yes" if r["p_yes"] >= 0.5 else "no") if k else "" for r, k in zip(rows, ok)],
        value=[None] * len(rows),
        probabilities=[[1 - r["p_yes"], r["p_yes"]] if k else [] for r, k in zip(rows, ok)],
        classes=[CLASSES if k else [] for k in ok])


def feedback(deployment: str, labels: list[tuple[str, str]], ts_ms: int, batch_id: str | None = None) -> FeedbackBatch:
    return FeedbackBatch(batch_id=batch_id or f"f-{uuid.uuid4().hex}", deployment=deployment,
                         request_id=[r for r, _ in labels], label=[lab for _, lab in labels],
                         value=[None] * len(labels), ts_ms=[ts_ms] * len(labels))
