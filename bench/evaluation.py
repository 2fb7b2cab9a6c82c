"""The evaluation report's cost against training, and the scheduler's fire lag.

Evaluation: a LightGBM job on `--rows` (100,000) x `--features` (50) synthetic rows (scikit-learn's
make_classification, or make_regression), written as a CSV and trained by the real trainer (`LightGBMTrainer.fit`,
with a test split so the report covers two splits) for `--rounds` (200) rounds. What the report costs is timed
inside that same fit: the test split's predictions and `evaluation_report` (confusion matrix, per-class figures,
ROC/PR/calibration curves, residuals, worst rows, importance); training is the rest of the fit. Per task:
binary, multiclass (10 classes), regression.

Fire lag: `python -m bench.schedule_lag` (the real scheduler on PostgreSQL) for `--lag-seconds`, its p99.

    python -m bench.evaluation [--rows 100000] [--features 50] [--rounds 200] [--lag-seconds 20] [--pg URL]

Ends with `ratio=` (the worst task's report time / training time; goal ≤ 0.10) and `p99_lag_ms=` (goal ≤ 1000).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import PG_SERVER, ROOT, parser, print_ratio, work_dir


class Quiet:
    def step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def dataset(folder: Path, task: str, rows: int, features: int) -> Path:
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification, make_regression

    if task == "regression":
        X, y = make_regression(rows, features, n_informative=20, noise=10.0, random_state=1)
    else:
        X, y = make_classification(rows, features, n_informative=20, n_classes=2 if task.startswith("binary") else 10,
                                   random_state=1)
    frame = pd.DataFrame(X.astype(np.float32), columns=[f"f{i}" for i in range(features)])
    frame["target"] = y
    path = folder / f"{task}.csv"
    frame.to_csv(path, index=False)
    return path


def timed_fit(path: Path, task: str, rounds: int) -> tuple[float, float]:
    """(seconds of the whole fit, seconds of it spent on the report: test predictions and evaluation_report)."""
    import lightgbm as lgb

    import runners.trainers.lightgbm_trainer as trainer_module
    from runners.trainers import TrainSpec

    spent = [0.0]
    report, predict = trainer_module.evaluation_report, trainer_module._predict

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    calls = [0]

    def predict_test(booster: lgb.Booster, X, params):  # the second prediction of a holdout fit is the test split's
        calls[0] += 1
        return timed(predict)(booster, X, params) if calls[0] == 2 else predict(booster, X, params)

    trainer_module.evaluation_report, trainer_module._predict = timed(report), predict_test
    try:
        spec = TrainSpec("lightgbm", task, path.as_uri(), "target", {"n_estimators": rounds, "num_threads": 1},
                         dataset_roots=(path.parent,), validation={"strategy": "holdout", "test_fraction": 0.1})
        start = time.perf_counter()
        trainer_module.LightGBMTrainer().fit(spec, Quiet())
        return time.perf_counter() - start, spent[0]
    finally:
        trainer_module.evaluation_report, trainer_module._predict = report, predict


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--lag-seconds", type=float, default=20.0)
    p.add_argument("--pg", default=PG_SERVER)
    args = p.parse_args()

    worst = 0.0
    with work_dir() as folder:
        for task in ("binary_classification", "multiclass_classification", "regression"):
            path = dataset(folder, task, args.rows, args.features)
            total, report = timed_fit(path, task, args.rounds)
            training = total - report
            worst = max(worst, report / training)
            print(f"{task:<26} {args.rows:,} x {args.features}, {args.rounds} rounds: training {training:.2f} s, "
                  f"report {report * 1000:.0f} ms ({report / training:.1%})", flush=True)
    lag = subprocess.run([sys.executable, "-m", "bench.schedule_lag", "--seconds", str(args.lag_seconds),
                          "--pg", args.pg], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    print(lag.strip())
    print_ratio(worst, digits=3, note=" (report time / training time, worst task; goal <= 0.10)")
    found = re.search(r"p99_lag_ms=([0-9.]+)", lag)
    if found:
        print(f"p99_lag_ms={found.group(1)}")


if __name__ == "__main__":
    main()
