"""The A/B report over 10,000,000 predictions: Trainyard's per-minute aggregates vs exporting to pandas.

Data (numpy, seeded): --rows prediction records of one deployment, one request each, spread over one day in time
order; 3 revisions (a third of the day each); 2 variants, `control` 90% and `challenger` 10% of the traffic in every
revision; binary classification (classes ["malignant", "benign"], probabilities [p, 1 − p], the label with p ≥ 0.5;
control right 90% of the time, challenger 91%); latency log-normal (median 0.9 ms control, 1.0 ms challenger);
status 200, 0.1% 500s (no prediction, no probabilities); request ids 32 hex digits as the inference server makes
them; batch ids per server and second. --feedback rows of feedback: labels for a random 10% of the requests (errors
included, as a client would send them), 1% of them corrected later (a first, wrong label, then the right one an hour
later), so "the latest per request" matters.

Loading goes the service's way: predictions as the Arrow columns PredictionStore.insert_batches builds, through
the store's `ch.insert` (--chunk rows per insert, one deduplication token each), so the materialized view keeps
`prediction_minutes`; feedback through `PredictionStore.insert_feedback` itself, in the API's 2,000-row batches,
--gather per call as the projector fetches them, so each insert computes its effects on `label_minutes` (a look-up
of its request ids in the 10M predictions). Both rates are printed: they are the projectors' costs at this size.

Trainyard: `api.ab.report(...)` itself — `variant_stats` (one query over the per-minute aggregates) and the
statistics (`summarize` per variant, `compare`, `srm` per revision) — with an in-memory stub for the two PostgreSQL
read-model calls it makes (the deployment row and its history). Per metric (accuracy, logloss): one untimed run,
then the median of --repeats. The window is the report's default (since 0, until now: every row). For reference,
the same figures by one join pass over the raw tables (how the report read before the aggregates).

Baseline, as a user of MLflow/SageMaker-style prediction logging would do it: export the rows from the log store
(here chDB, straight into DataFrames with chDB's DataFrame output, only the columns needed) and compute in pandas:
the latest feedback per request (sort by ts, drop_duplicates), a left merge on request_id, per variant requests,
errors (status ≥ 500), latency p50/p95/p99, labelled (feedback, status < 400, both labels non-empty) and accuracy;
per revision and variant the requests; the accuracy difference with a fixed-horizon two-proportion z-test
(unpooled). Export and compute are timed separately, one run each by default (--baseline-repeats), and
`ratio=` is (export + compute) ÷ Trainyard's accuracy report median.

Checks ("same figures"): per variant requests, errors, labelled and Σ correct equal the raw pass's, pandas' and
the generator's exactly, requests per revision too, the difference and its fixed-horizon interval to 1e-12;
logloss's Σ equals the generator's (float32 probabilities, rel 1e-9). Latency quantiles differ by design (the
aggregates merge DDSketches (1% relative), the raw pass samples 8,192 values, pandas is exact) and are printed, not compared.
Then (--no-rebuild to skip) the aggregates are rebuilt from the raw tables and must give the same figures.

    .venv/bin/python -m bench.ab_report [--rows 10000000] [--feedback 1000000] [--repeats 5] [--db DIR]

Ends with `ratio=` and `goal: report <= 100 ms: MET/MISSED (x ms)` (the accuracy report). About 5 GB of memory at
the defaults (peak: the baseline's DataFrames and merge).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pyarrow as pa


from api.ab import report
from bench.harness import parser, print_ratio
from api.deployments import FEEDBACK_CHUNK
from domain.contract import FeedbackBatch
from infra.clickhouse import connect as connect_clickhouse
from projections.telemetry import ab_queries, prediction_store
from projections.telemetry.prediction_store import COLUMNS, PredictionStore

DEPLOYMENT = "tumor-classifier"
CLASSES = ["malignant", "benign"]
VARIANTS = ["control", "challenger"]
WEIGHTS = {"control": 90, "challenger": 10}
MODELS = {"control": ("tumor-gbm", 3), "challenger": ("tumor-gbm", 4)}
ACCURACY = {"control": 0.90, "challenger": 0.91}
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
REVISIONS = 3
P_MALIGNANT = 0.37
ERROR_RATE = 0.001
CORRECTIONS = 0.01


# ---------------------------------------------------------------------------------------------------------------
# Data

def hex_ids(rng: np.random.Generator, n: int) -> tuple[pa.Array, np.ndarray]:
    """n uuid4-like 32-char lowercase hex ids: the Arrow string array and its bytes as an (n, 32) uint8 array."""
    table = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = rng.integers(0, 16, size=(n, 32), dtype=np.uint8)
    chars = table[nibbles]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    arr = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])
    return arr, chars


def ids_from_chars(chars: np.ndarray) -> pa.Array:
    n = len(chars)
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(chars).tobytes())])


def pick(values: list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(idx))


def load(ch: Any, rows: int, feedback: int, chunk: int, gather: int, seed: int) -> tuple[float, float, dict[str, Any]]:
    """Insert the predictions and the feedback; returns (prediction load s, feedback load s, generator truth)."""
    rng = np.random.default_rng(seed)
    store = PredictionStore(ch)
    store.ensure_schema()
    label_share = feedback / rows / (1 + CORRECTIONS)  # feedback rows = labelled × (1 + corrections)
    fb_ids, fb_ts, fb_truth, fb_meta = [], [], [], []
    insert_s = 0.0
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        k = np.arange(start, start + n, dtype=np.int64)
        ts = T0_MS + k * DAY_MS // rows + rng.integers(0, max(DAY_MS // rows, 1), n)
        revision = (1 + k * REVISIONS // rows).astype(np.uint32)
        challenger = rng.random(n) < WEIGHTS["challenger"] / 100
        variant = challenger.astype(np.int8)
        status = np.where(rng.random(n) < ERROR_RATE, 500, 200).astype(np.uint16)
        ok = status < 400
        latency = rng.lognormal(np.log(np.where(challenger, 1000.0, 900.0)), 0.5).astype(np.uint32)
        malignant = rng.random(n) < P_MALIGNANT
        # score ~ N(±s, 1): right when its sign matches the truth, so accuracy = Φ(s)
        s = np.where(challenger, _ndtri(ACCURACY["challenger"]), _ndtri(ACCURACY["control"]))
        z = s * np.where(malignant, 1.0, -1.0) + rng.standard_normal(n)
        p_mal = (1.0 / (1.0 + np.exp(-1.6 * z))).astype(np.float32)
        pred_mal = p_mal >= 0.5
        ids, chars = hex_ids(rng, n)
        n_out = int(ok.sum())
        offsets = np.zeros(n + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(np.where(ok, 2, 0))
        probs = np.empty(2 * n_out, dtype=np.float32)
        probs[0::2], probs[1::2] = p_mal[ok], (1.0 - p_mal[ok]).astype(np.float32)
        class_idx = np.tile(np.array([0, 1], dtype=np.int8), n_out)
        model = pick([MODELS[v][0] for v in VARIANTS], variant)
        columns = {
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "request_id": ids,
            "deployment": pick([DEPLOYMENT], np.zeros(n, dtype=np.int8)),
            "revision": pa.array(revision, pa.uint32()),
            "variant": pick(VARIANTS, variant),
            "model": model,
            "version": pa.array(np.where(challenger, MODELS["challenger"][1], MODELS["control"][1]), pa.uint32()),
            "status": pa.array(status, pa.uint16()),
            "latency_us": pa.array(latency, pa.uint32()),
            "n_rows": pa.array(np.ones(n, dtype=np.uint32), pa.uint32()),
            "shadow": pa.array(np.zeros(n, dtype=bool), pa.bool_()),
            "prediction": pick(["", *CLASSES], np.where(ok, np.where(pred_mal, 1, 2), 0).astype(np.int8)),
            "value": pa.nulls(n, pa.float64()),
            "probabilities": pa.ListArray.from_arrays(pa.array(offsets), pa.array(probs, pa.float32())),
            "classes": pa.ListArray.from_arrays(pa.array(offsets), pick(CLASSES, class_idx)),
            "server_id": pick(["inference-a", "inference-b"], (k % 2).astype(np.int8)),
            "batch_id": _batch_ids(ts, k),
        }
        assert list(columns) == COLUMNS
        t = time.perf_counter()
        ch.insert("predictions", COLUMNS, columns, dedup_token=f"bench-predictions-{start}")
        insert_s += time.perf_counter() - t
        # feedback for a random share of this chunk's requests (errors included)
        want = round((start + n) * label_share) - round(start * label_share)
        labelled = np.sort(rng.choice(n, size=want, replace=False))
        fb_ids.append(chars[labelled])
        fb_ts.append(ts[labelled] + rng.integers(60_000, 7_200_000, len(labelled)))
        fb_truth.append(malignant[labelled])
        p_true = np.where(malignant[labelled], p_mal[labelled], (1.0 - p_mal[labelled]).astype(np.float32))
        fb_meta.append({"variant": variant[labelled], "ok": ok[labelled], "right": (pred_mal == malignant)[labelled],
                        "p_true": p_true.astype(np.float32)})
    chars = np.concatenate(fb_ids)
    ts = np.concatenate(fb_ts)
    truth = np.concatenate(fb_truth)
    meta = {k: np.concatenate([m[k] for m in fb_meta]) for k in fb_meta[0]}
    # corrections: the first label wrong, the right one an hour later
    fix = np.sort(rng.choice(len(chars), size=max(feedback - len(chars), 0), replace=False))
    first_label = truth.copy()
    first_label[fix] = ~truth[fix]
    # through the feedback projector's path: FEEDBACK_CHUNK-row batches (as the API publishes them), `gather` of them
    # per PredictionStore.insert_feedback call (as the projector fetches them)
    fb_s = 0.0
    rows_fb = 0
    for what, (c, t_ms, lab) in {"labels": (chars, ts, first_label),
                                 "corrections": (chars[fix], ts[fix] + 3_600_000, truth[fix])}.items():
        order = np.argsort(t_ms, kind="stable")  # feedback arrives in time order
        ids = ids_from_chars(c[order]).to_pylist()
        ts_list = t_ms[order].tolist()
        labels = [CLASSES[0] if x else CLASSES[1] for x in lab[order]]
        batches = [FeedbackBatch.model_construct(
            batch_id=f"feedback-{what}-{start}", deployment=DEPLOYMENT, request_id=ids[start:start + FEEDBACK_CHUNK],
            label=labels[start:start + FEEDBACK_CHUNK], value=[None] * len(ids[start:start + FEEDBACK_CHUNK]),
            ts_ms=ts_list[start:start + FEEDBACK_CHUNK]) for start in range(0, len(ids), FEEDBACK_CHUNK)]
        for start in range(0, len(batches), gather):
            t = time.perf_counter()
            store.insert_feedback(batches[start:start + gather])
            fb_s += time.perf_counter() - t
        rows_fb += len(ids)
    # what the report must say, from the generator (final label = the truth for every labelled request)
    expected: dict[str, Any] = {}
    for i, v in enumerate(VARIANTS):
        m = (meta["variant"] == i) & meta["ok"]
        expected[v] = {"labelled": int(m.sum()), "right": int(meta["right"][m].sum()),
                       "logloss_sum": float(np.sum(-np.log(np.maximum(meta["p_true"][m].astype(np.float64), 1e-15))))}
    expected["feedback_rows"], expected["feedback_requests"] = rows_fb, len(chars)
    return insert_s, fb_s, expected


def _batch_ids(ts: np.ndarray, k: np.ndarray) -> pa.Array:
    """One batch id per server and second, as the inference servers publish them (about once a second)."""
    second = (ts - T0_MS) // 1000
    key = second * 2 + (k % 2)
    uniq, inv = np.unique(key, return_inverse=True)
    names = [f"inference-{'ab'[int(u % 2)]}:{T0_MS + int(u // 2) * 1000}:{int(u // 2)}" for u in uniq]
    return pa.array(names, pa.string()).take(pa.array(inv.astype(np.int32)))


def _ndtri(p: float) -> float:
    from scipy.special import ndtri
    return float(ndtri(p))


# ---------------------------------------------------------------------------------------------------------------
# Trainyard

class _Deployments:
    """The two read-model calls report() makes (PostgreSQL in the service), answered from memory."""

    def get(self, name: str, *, project: str) -> dict[str, Any] | None:
        return {"name": name, "revision": REVISIONS,
                "variants": [{"name": v, "model": MODELS[v][0], "version": MODELS[v][1], "weight": WEIGHTS[v]}
                             for v in VARIANTS]}

    def history(self, name: str, *, project: str) -> list[dict[str, Any]]:
        return [{"revision": r, "variants": [{"name": v, "weight": WEIGHTS[v]} for v in VARIANTS]}
                for r in range(1, REVISIONS + 1)]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    result = fn()  # warm-up, untimed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, times


def settle(ch: Any, limit_s: float = 180.0) -> float:
    """Wait for chDB's background merges to finish (they would share the 2 cores with the timed queries)."""
    start = time.perf_counter()
    while ch.query("SELECT count() FROM system.merges")[0][0] and time.perf_counter() - start < limit_s:
        time.sleep(0.5)
    return time.perf_counter() - start


def fmt_times(times: list[float]) -> str:
    return (f"median {statistics.median(times) * 1000:.1f} ms of {len(times)} "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")


# ---------------------------------------------------------------------------------------------------------------
# Baseline: export to pandas, compute there

EXPORT_PREDICTIONS = ("SELECT request_id, revision, variant, status, latency_us, prediction FROM predictions "
                      "WHERE deployment = {d:String} AND ts >= fromUnixTimestamp64Milli({since:Int64}) "
                      "AND ts < fromUnixTimestamp64Milli({until:Int64})")
EXPORT_FEEDBACK = "SELECT request_id, ts, label FROM feedback WHERE deployment = {d:String}"


def baseline_export(ch: Any, since: int, until: int) -> tuple[Any, Any]:
    params = {"d": DEPLOYMENT, "since": since, "until": until}
    preds = ch._run(EXPORT_PREDICTIONS, params, "DataFrame")
    fb = ch._run(EXPORT_FEEDBACK, {"d": DEPLOYMENT}, "DataFrame")
    return preds, fb


def baseline_compute(preds: Any, fb: Any, control: str = "control") -> dict[str, Any]:
    import pandas as pd
    from scipy.special import erfc

    latest = fb.sort_values("ts", kind="stable").drop_duplicates("request_id", keep="last")
    df = preds.merge(latest[["request_id", "label"]], on="request_id", how="left")
    df["is_labelled"] = (df["label"].notna() & (df["status"] < 400) & (df["label"] != "")
                         & (df["prediction"] != ""))
    df["correct"] = df["is_labelled"] & (df["label"] == df["prediction"])
    df["is_error"] = df["status"] >= 500
    g = df.groupby("variant", observed=True)
    per_variant = pd.DataFrame({"requests": g.size(), "errors": g["is_error"].sum(),
                                "labelled": g["is_labelled"].sum(), "right": g["correct"].sum()})
    lat = g["latency_us"].quantile([0.5, 0.95, 0.99]).unstack()
    per_variant["accuracy"] = per_variant["right"] / per_variant["labelled"]
    per_revision = preds.groupby(["revision", "variant"], observed=True).size()
    out: dict[str, Any] = {"variants": {}, "revisions": {}}
    for v, r in per_variant.iterrows():
        out["variants"][str(v)] = {"requests": int(r["requests"]), "errors": int(r["errors"]),
                                   "labelled": int(r["labelled"]), "right": int(r["right"]),
                                   "accuracy": float(r["accuracy"]),
                                   "latency_ms": [float(x) / 1000 for x in lat.loc[v]]}
    for (rev, v), n in per_revision.items():
        out["revisions"][(int(rev), str(v))] = int(n)
    c = out["variants"][control]
    for v, t in out["variants"].items():
        if v == control:
            continue
        diff = t["accuracy"] - c["accuracy"]
        var = (c["accuracy"] * (1 - c["accuracy"]) / c["labelled"]
               + t["accuracy"] * (1 - t["accuracy"]) / t["labelled"])
        half = 1.959963984540054 * math.sqrt(var)
        out["comparison"] = {"challenger": v, "difference": diff, "fixed_ci": [diff - half, diff + half],
                             "fixed_p_value": float(erfc(abs(diff) / math.sqrt(2 * var)))}
    return out


# ---------------------------------------------------------------------------------------------------------------
# The figures from the raw tables, as the report computed them before the per-minute aggregates: one pass joining
# every prediction with the latest feedback per request (the rebuild's SQL is the same computation)

def raw_pass(ch: Any, metric: str, until: int) -> list[tuple]:
    counted, value = prediction_store.counted(metric, "f"), prediction_store.metric_value(metric, "f")
    sql = ("SELECT p.variant, p.shadow, count(), countIf(p.status >= 500), quantiles(0.5, 0.95, 0.99)(p.latency_us), "
           f"countIf(f.request_id != '' AND {counted}), sumIf({value}, f.request_id != '' AND {counted}) "
           "FROM predictions AS p LEFT ANY JOIN (SELECT request_id, label, value FROM feedback FINAL "
           "WHERE deployment = {d:String}) AS f ON p.request_id = f.request_id "
           "WHERE p.deployment = {d:String} AND p.ts < fromUnixTimestamp64Milli({until:Int64}) "
           "GROUP BY p.variant, p.shadow SETTINGS join_algorithm = 'partial_merge'")
    return ch.query(sql, {"d": DEPLOYMENT, "until": until})


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000, help="prediction records")
    ap.add_argument("--feedback", type=int, default=1_000_000, help="feedback rows (labels for ~10%% of requests)")
    ap.add_argument("--chunk", type=int, default=1_000_000, help="rows per insert")
    ap.add_argument("--repeats", type=int, default=5, help="timed reports per metric (after one untimed)")
    ap.add_argument("--gather", type=int, default=10, help="feedback batches per insert_feedback call")
    ap.add_argument("--baseline-repeats", type=int, default=1, help="timed baseline exports and computations")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-rebuild", dest="rebuild", action="store_false",
                    help="skip rebuilding the aggregates from the raw tables (and checking they come out the same)")
    ap.add_argument("--db", help="keep the chDB data in this folder (and reuse what a run with the same --db, "
                    "--rows, --feedback and --seed loaded there; --optimize merges it for good)")
    args = ap.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    work = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="trainyard-bench-ab-"))
    ch = connect_clickhouse(None, work / "chdb")
    try:
        run(ch, args)
    finally:
        ch.close()
        if not args.db:
            shutil.rmtree(work, ignore_errors=True)


def run(ch: Any, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    saved = Path(args.db) / f"expected-{args.rows}-{args.feedback}-{args.seed}.json" if args.db else None
    if saved and saved.exists():
        expected = json.loads(saved.read_text())
        insert_s = fb_s = float("nan")
        print(f"reusing the data in {args.db}")
    else:
        insert_s, fb_s, expected = load(ch, args.rows, args.feedback, args.chunk, args.gather, args.seed)
        if saved:
            saved.write_text(json.dumps(expected))
    took = time.perf_counter() - start
    n_pred = ch.query("SELECT count() FROM predictions")[0][0]
    n_fb = ch.query("SELECT count() FROM feedback")[0][0]
    parts = ch.query("SELECT table, count() FROM system.parts WHERE active AND table IN ('predictions', 'feedback') "
                     "GROUP BY table ORDER BY table")
    if insert_s == insert_s:  # loaded now (NaN: reused)
        print(f"loaded {n_pred:,} predictions and {n_fb:,} feedback rows in {took:.1f} s (generation included)")
        print(f"  predictions: ch.insert {insert_s:.1f} s = {n_pred / insert_s:,.0f} rows/s (--chunk {args.chunk:,}; "
              "the per-minute view included)")
        print(f"  feedback through PredictionStore.insert_feedback ({FEEDBACK_CHUNK:,}-row batches, {args.gather} "
              f"per call): {fb_s:.1f} s = {expected['feedback_rows'] / fb_s:,.0f} rows/s at {n_pred:,} predictions")
    assert n_pred == args.rows and expected["feedback_requests"] <= n_fb <= expected["feedback_rows"], (n_pred, n_fb)
    minutes = ch.query("SELECT (SELECT count() FROM prediction_minutes), (SELECT count() FROM label_minutes)")[0]
    print(f"  per-minute rows: prediction_minutes {minutes[0]:,}, label_minutes {minutes[1]:,} (before merges)")

    waited = settle(ch)
    parts = ch.query("SELECT table, count() FROM system.parts WHERE active AND table IN ('predictions', 'feedback', "
                     "'prediction_minutes', 'label_minutes') GROUP BY table ORDER BY table")
    print(f"waited {waited:.1f} s for chDB's background merges; active parts: "
          f"{', '.join(f'{t} {n}' for t, n in parts)}")
    until = int(time.time() * 1000) + 1
    s = SimpleNamespace(clickhouse=ch, deployments=_Deployments())

    reports, ours = {}, {}
    for metric in ("accuracy", "logloss"):
        reports[metric], ours[metric] = timed(
            lambda m=metric: report(s, DEPLOYMENT, m, 0, until, project="default"), args.repeats)
        print(f"trainyard: report({metric}) = variant_stats (per-minute aggregates) + summarize/compare/srm over "
              f"{n_pred:,} predictions: {fmt_times(ours[metric])}")
    rows, _ = ab_queries.variant_stats(ch, DEPLOYMENT, "accuracy", 0, until)
    raw, raw_times = timed(lambda: raw_pass(ch, "accuracy", until), 1)
    print(f"           the same figures from the raw tables (one join pass, how the report read before): "
          f"{fmt_times(raw_times)}")

    # baseline
    exports, computes = [], []
    for _ in range(args.baseline_repeats):
        t = time.perf_counter()
        preds, fb = baseline_export(ch, 0, until)
        exports.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = baseline_compute(preds, fb)
        computes.append(time.perf_counter() - t)
        mem = (preds.memory_usage(deep=True).sum() + fb.memory_usage(deep=True).sum()) / 2**20
        del preds, fb
    export_s, compute_s = statistics.median(exports), statistics.median(computes)
    print(f"baseline:  export to pandas (chDB DataFrame output: {len(EXPORT_PREDICTIONS.split(','))} prediction "
          f"columns, 3 feedback columns; {mem:,.0f} MiB of DataFrames) {export_s:.2f} s, compute (latest feedback, "
          f"left merge, groupby, quantiles, z-test) {compute_s:.2f} s, total {export_s + compute_s:.2f} s"
          + (f" (medians of {args.baseline_repeats})" if args.baseline_repeats > 1 else ""))

    # the same figures
    acc = reports["accuracy"]
    for v in acc["variants"]:
        row = next(r for r in rows if r["variant"] == v["name"] and not r["shadow"])
        b, e = theirs["variants"][v["name"]], expected[v["name"]]
        r = next(x for x in raw if x[0] == v["name"] and not x[1])
        assert (v["requests"], v["errors"], v["labelled"]) == (b["requests"], b["errors"], b["labelled"]), (v, b)
        assert (r[2], r[3], r[5], round(r[6])) == (v["requests"], v["errors"], v["labelled"], b["right"]), (r, v, b)
        assert round(row["metric_sum"]) == b["right"] == e["right"] and b["labelled"] == e["labelled"], (row, b, e)
        assert abs(v["value"] - b["accuracy"]) < 1e-12, (v["value"], b["accuracy"])
        ll = next(x for x in reports["logloss"]["variants"] if x["name"] == v["name"])
        assert ll["labelled"] == e["labelled"] and abs(ll["value"] * ll["labelled"] - e["logloss_sum"]) <= \
            1e-9 * e["logloss_sum"], (ll, e)
        print(f"  {v['name']:<10} requests {v['requests']:>9,} errors {v['errors']:>6,} labelled {v['labelled']:>7,} "
              f"accuracy {v['value']:.5f} logloss {ll['value']:.5f}  latency p50/p95/p99 ms: trainyard (DDSketch) "
              f"{'/'.join(f'{x:.3f}' for x in (v['latency_p50_ms'], v['latency_p95_ms'], v['latency_p99_ms']))}"
              f", raw quantiles {'/'.join(f'{x / 1000:.3f}' for x in r[4])}"
              f", pandas (exact) {'/'.join(f'{x:.3f}' for x in b['latency_ms'])}")
    for check in acc["srm"]["revisions"]:
        for name, n in check["observed"].items():
            assert theirs["revisions"][(check["revision"], name)] == n
    assert sum(len(c["observed"]) for c in acc["srm"]["revisions"]) == len(theirs["revisions"])
    comp, bc = acc["comparisons"][0], theirs["comparison"]
    assert abs(comp["difference"] - bc["difference"]) < 1e-12
    assert all(abs(a - b) < 1e-12 for a, b in zip(comp["fixed_ci"], bc["fixed_ci"])), (comp["fixed_ci"], bc)
    print(f"  challenger − control accuracy {comp['difference']:+.5f}: always-valid CI "
          f"[{comp['ci'][0]:+.5f}, {comp['ci'][1]:+.5f}] p {comp['p_value']:.3g} → {comp['decision']}; fixed z CI "
          f"[{bc['fixed_ci'][0]:+.5f}, {bc['fixed_ci'][1]:+.5f}] p {bc['fixed_p_value']:.3g} (pandas); "
          "SRM p per revision: " + ", ".join(f"{c['revision']}: {c['p_value']:.2f}" for c in acc["srm"]["revisions"]))
    print("same figures (requests, errors, labelled, Σ correct per variant from the aggregates, the raw tables, "
          "pandas and the generator; requests per revision; the difference and its fixed-horizon interval; "
          "logloss Σ equals the generator's)")

    if args.rebuild:
        t = time.perf_counter()
        PredictionStore(ch).rebuild_minutes()
        rebuilt_s = time.perf_counter() - t
        again, _ = ab_queries.variant_stats(ch, DEPLOYMENT, "accuracy", 0, until)
        key = lambda r: (r["variant"], r["shadow"], r["requests"], r["errors"], r["labelled"], round(r["metric_sum"]))  # noqa: E731
        assert sorted(map(key, again)) == sorted(map(key, rows)), (again, rows)
        print(f"rebuild_minutes() from the raw tables: {rebuilt_s:.1f} s; the same figures as the live aggregates")

    ours_s = statistics.median(ours["accuracy"])
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_ratio((export_s + compute_s) / ours_s, 1)
    print(f"goal: report <= 100 ms: {'MET' if ours_s <= 0.1 else 'MISSED'} ({ours_s * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
