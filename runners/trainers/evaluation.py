"""A trained model's evaluation report: what a user reads to trust it, computed on the runner after training.

`evaluation_report(task, splits, importance, ...)` -> a JSON-able dict, stored beside the model as the job's
"evaluation.json" artifact (GET /api/v1/training/jobs/{id}/evaluation serves it). Per split ("validation", and
"test" where the job held one out; k-fold: "validation" is the out-of-fold predictions, and `folds` lists each
fold's figures with their mean and sd):
  * classification: the task's metrics, the confusion matrix with its labels, per-class precision, recall, F1 and
    support, ROC and precision-recall curves (one-vs-rest per class for multiclass, at most MAX_CURVE_CLASSES) with
    AUC and average precision, a calibration curve (binary: P(positive); multiclass: the top class's confidence
    against accuracy), log loss, and the worst rows (the highest log loss);
  * regression: RMSE, MAE, MAPE (over the rows whose target is not 0; `mape_rows` says how many), sMAPE (a row
    whose target and prediction are both 0 counts 0), R² (validation_metrics), residual quantiles and the worst rows
    (largest error).
Rows are named by their number in the dataset, never by their values. Curves are downsampled to MAX_CURVE_POINTS.
`feature_importance` is a list of {feature, importance} (LightGBM: total gain; others: permutation importance,
`permutation_importance`), most important first. Every figure is what scikit-learn's own function gives on the
same predictions (tests compare them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MAX_CURVE_POINTS = 101
MAX_CURVE_CLASSES = 20
WORST_ROWS = 10
MAX_IMPORTANCES = 200
RESIDUAL_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
CALIBRATION_BINS = 10


def evaluation_report(task: str, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                      class_labels: Sequence[str] | None, importance: list[dict[str, Any]] | None = None,
                      folds: list[dict[str, float]] | None = None, best_step: int | None = None,
                      importance_kind: str | None = None) -> dict[str, Any]:
    """The report of `splits` (name -> (y_true, predicted in validation_metrics' shape, row numbers))."""
    section = _regression if task == "regression" else _classification
    report: dict[str, Any] = {"task": task, "splits": {name: section(task, y, p, rows, class_labels)
                                                       for name, (y, p, rows) in splits.items() if len(y)}}
    if folds:
        names = sorted({k for fold in folds for k in fold})
        report["folds"] = {"per_fold": folds, "mean": {n: float(np.mean([f[n] for f in folds if n in f])) for n in names},
                           "sd": {n: float(np.std([f[n] for f in folds if n in f], ddof=1)) if len(folds) > 1 else 0.0
                                  for n in names}}
    if importance is not None:
        report["feature_importance"] = importance[:MAX_IMPORTANCES]
        report["feature_importance_kind"] = importance_kind
    if best_step is not None:
        report["best_step"] = best_step
    return _finite(report)


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The figures a job list shows beside its final metrics: the test split's metrics as `test_<name>`, k-fold's sd
    as `<name>_sd`."""
    out: dict[str, float] = {}
    test = report.get("splits", {}).get("test")
    if test:
        out.update({f"test_{k}": v for k, v in test["metrics"].items() if v is not None})
    for name, sd in (report.get("folds") or {}).get("sd", {}).items():
        if sd is not None:
            out[f"{name}_sd"] = sd
    return out


def gain_importance(names: Sequence[str], gains: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-np.asarray(gains, dtype=float), kind="stable")
    return [{"feature": names[i], "importance": float(gains[i])} for i in order]


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, y: np.ndarray, task: str,
                           seed: int = 0, n_repeats: int = 3, max_rows: int = 5000) -> list[dict[str, Any]]:
    """How much the score (accuracy, or R² for regression: scikit-learn's default scores) falls when one feature's
    column is shuffled, averaged over `n_repeats` shuffles, on at most `max_rows` rows: scikit-learn's
    `permutation_importance` for a model it cannot wrap (a torch module, an ONNX session)."""
    from sklearn.inspection import permutation_importance as sk_permutation

    rng = np.random.default_rng(seed)
    if len(y) > max_rows:
        keep = np.sort(rng.choice(len(y), max_rows, replace=False))
        X, y = X[keep], y[keep]
    result = sk_permutation(_Predictor(predict, task), X, y, n_repeats=n_repeats, random_state=seed % 2**32)
    return [{"feature": str(i), "importance": float(m), "sd": float(s)}
            for i, (m, s) in enumerate(zip(result.importances_mean, result.importances_std))]


def named(importance: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """`permutation_importance`'s entries with feature names, most important first."""
    rows = [{**entry, "feature": names[int(entry["feature"])]} for entry in importance]
    return sorted(rows, key=lambda r: -r["importance"])


class _Predictor:
    """What scikit-learn's permutation_importance needs of an estimator: fit (never called) and score."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], task: str) -> None:
        self.predict_values, self.task = predict, task

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Predictor:
        return self

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        from sklearn.metrics import accuracy_score, r2_score

        out = self.predict_values(X)
        if self.task == "regression":
            return float(r2_score(y, out))
        chosen = (out >= 0.5).astype(np.int64) if out.ndim == 1 else out.argmax(axis=1)
        return float(accuracy_score(y, chosen))


def _classification(task: str, y: np.ndarray, p: np.ndarray, rows: np.ndarray,
                    class_labels: Sequence[str] | None) -> dict[str, Any]:
    from sklearn import metrics as m

    from runners.trainers import validation_metrics

    probabilities = np.column_stack([1 - p, p]) if p.ndim == 1 else p
    k = probabilities.shape[1]
    labels = list(class_labels) if class_labels else [str(i) for i in range(k)]
    chosen = probabilities.argmax(axis=1)
    precision, recall, f1, support = m.precision_recall_fscore_support(y, chosen, labels=list(range(k)),
                                                                        zero_division=0)
    clipped = np.clip(probabilities[np.arange(len(y)), y], 1e-15, 1.0)
    worst = np.argsort(np.log(clipped), kind="stable")[:WORST_ROWS]
    curve_classes = [1] if k == 2 else list(range(min(k, MAX_CURVE_CLASSES)))
    out: dict[str, Any] = {
        "rows": int(len(y)),
        "metrics": validation_metrics(task, y, p),
        "log_loss": float(m.log_loss(y, probabilities, labels=list(range(k)))),
        "confusion_matrix": {"labels": labels, "matrix": m.confusion_matrix(y, chosen, labels=list(range(k))).tolist()},
        "per_class": [{"label": labels[i], "precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i in range(k)],
        "roc": [_roc(y == c, probabilities[:, c], labels[c]) for c in curve_classes],
        "pr": [_pr(y == c, probabilities[:, c], labels[c]) for c in curve_classes],
        "calibration": _calibration(y == 1, probabilities[:, 1]) if k == 2 else
        _calibration(chosen == y, probabilities.max(axis=1)),
        "worst_rows": [{"row": int(rows[i]), "label": labels[int(y[i])], "predicted": labels[int(chosen[i])],
                        "p_label": float(probabilities[i, y[i]])} for i in worst],
    }
    if k > 2 and len(np.unique(y)) == k:
        out["roc_auc_ovr_macro"] = float(m.roc_auc_score(y, probabilities, multi_class="ovr", average="macro",
                                                         labels=list(range(k))))
    return out


def _roc(positive: np.ndarray, score: np.ndarray, label: str) -> dict[str, Any]:
    from sklearn import metrics as m

    if positive.all() or not positive.any():  # one class present: no curve
        return {"label": label, "auc": None, "fpr": [], "tpr": []}
    fpr, tpr, _ = m.roc_curve(positive, score)
    keep = _downsample(len(fpr))
    return {"label": label, "auc": float(m.roc_auc_score(positive, score)), "fpr": fpr[keep].tolist(),
            "tpr": tpr[keep].tolist()}


def _pr(positive: np.ndarray, score: np.ndarray, label: str) -> dict[str, Any]:
    from sklearn import metrics as m

    if not positive.any():
        return {"label": label, "average_precision": None, "precision": [], "recall": []}
    precision, recall, _ = m.precision_recall_curve(positive, score)
    keep = _downsample(len(precision))
    return {"label": label, "average_precision": float(m.average_precision_score(positive, score)),
            "precision": precision[keep].tolist(), "recall": recall[keep].tolist()}


def _calibration(outcome: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
    """Reliability in CALIBRATION_BINS equal-width bins of the predicted probability (empty bins left out)."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    count = np.bincount(which, minlength=CALIBRATION_BINS)
    predicted = np.bincount(which, weights=confidence, minlength=CALIBRATION_BINS)
    observed = np.bincount(which, weights=outcome.astype(float), minlength=CALIBRATION_BINS)
    used = count > 0
    gap = np.abs(predicted[used] / count[used] - observed[used] / count[used])
    return {"mean_predicted": (predicted[used] / count[used]).tolist(),
            "fraction_positive": (observed[used] / count[used]).tolist(), "count": count[used].tolist(),
            "expected_calibration_error": float((gap * count[used]).sum() / max(count.sum(), 1))}


def _regression(task: str, y: np.ndarray, p: np.ndarray, rows: np.ndarray,
                class_labels: Sequence[str] | None) -> dict[str, Any]:
    from runners.trainers import validation_metrics

    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    error = p - y
    worst = np.argsort(-np.abs(error), kind="stable")[:WORST_ROWS]
    return {
        "rows": int(len(y)),
        "metrics": validation_metrics(task, y, p),
        "mape_rows": int((y != 0).sum()),
        "residual_quantiles": {f"{q:g}": float(v) for q, v in zip(RESIDUAL_QUANTILES,
                                                                   np.quantile(error, RESIDUAL_QUANTILES))},
        "worst_rows": [{"row": int(rows[i]), "actual": float(y[i]), "predicted": float(p[i]),
                        "error": float(error[i])} for i in worst],
    }


def _downsample(n: int) -> np.ndarray:
    if n <= MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(np.int64))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a figure becomes null (undefined on this split)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
