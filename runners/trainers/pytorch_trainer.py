"""A PyTorch multilayer perceptron behind the Trainer protocol.

One step is one epoch (total_steps = epochs) of Adam over shuffled mini-batches. `train_loss` is the
mean loss over the epoch's batches (log loss, or mean squared error in target units for regression),
the validation metrics are computed after each epoch. Cancellation is checked before every batch.

The network standardizes its own input (train-split mean and std, missing values become the mean)
and, for regression, outputs values in target units: the exported module maps raw features to
logits or values, which is what serving and ONNX export want. Model bytes ("torch-state-dict") are
`torch.save` of {"format_version", "task", "architecture", "state_dict", "feature_names",
"class_labels"}; `load_model` rebuilds the module (safe to load with weights_only=True).

Deterministic given the spec: weights and shuffling draw from a generator seeded by `spec.seed`, not
torch's global RNG, so concurrent fits in one process do not disturb each other. `num_threads`
(default 1) sets torch's intra-op threads, which is process-wide.

Checkpoints (see runners/trainers/__init__.py for when) are `torch.save` of {"format_version", "kind", "task",
"architecture", "epoch", "model", "optimizer", "rng"}: the module's and Adam's state, and the generator's state with
torch's, numpy's and Python's global ones (and CUDA's on a GPU). A fit resumed from one continues at epoch + 1 with
the same batches as an uninterrupted fit, so on the CPU it ends with the same model and metrics.
"""
from __future__ import annotations

import io
import logging
import math
import random
import warnings

import numpy as np
import torch
from torch import nn

from domain.frameworks import PYTORCH
from domain.validation import Validation
from infra.datasets import Split, load_dataset
from runners.trainers.evaluation import evaluation_report, named, permutation_importance, summary
from runners.trainers import (
    CheckpointClock, CheckpointMismatch, Reporter, TrainingCancelled, TrainResult, TrainSpec, check_budget,
    resolve_params, step_metrics, validation_metrics,
)

FORMAT_VERSION = 1
CHECKPOINT_KIND = "trainyard-pytorch-mlp-checkpoint"
log = logging.getLogger("trainyard.trainer")


class StandardizedMLP(nn.Module):
    """Raw float32 features (n, n_features) in; (n, n_outputs) logits or target-unit values out."""

    def __init__(self, n_features: int, hidden_sizes: list[int], n_outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.body = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.x_mean) / self.x_std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        return self.body(z) * self.y_std + self.y_mean

    def reset_parameters(self, generator: torch.Generator) -> None:
        """nn.Linear's default initialization, drawn from `generator`."""
        for layer in self.body:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class PyTorchMLPTrainer:
    """Trainer for framework "pytorch". Stateless: one instance may serve many fits and threads."""

    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        params = resolve_params("pytorch", spec.task, spec.params)
        split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=spec.dataset_roots,
                             validation=Validation.parse(spec.validation))
        n_outputs = split.n_classes if spec.task == "multiclass_classification" else 1
        check_budget("pytorch", params, split.X_train.shape[1], n_outputs)
        torch.set_num_threads(params["num_threads"])
        device = training_device(spec.gpus)
        if split.folds:
            model, best, folds, oof = _cross_validate(spec, params, split, n_outputs, device, report)
            evaluated = {"validation": (split.y_train, oof, split.train_rows)}
        else:
            model, best = _holdout(spec, params, split, n_outputs, device, report)
            folds = None
            evaluated = {"validation": (split.y_valid, _predict_numpy(model, split.X_valid, spec.task, device),
                                        split.valid_rows)}
        if split.has_test:
            evaluated["test"] = (split.y_test, _predict_numpy(model, split.X_test, spec.task, device), split.test_rows)
        importance_rows = (split.X_train, split.y_train) if folds else (split.X_valid, split.y_valid)
        importance = permutation_importance(lambda X: _predict_numpy(model, X, spec.task, device), *importance_rows,
                                            spec.task, seed=spec.seed)
        report_json = evaluation_report(spec.task, evaluated, split.class_labels,
                                        importance=named(importance, split.feature_names),
                                        importance_kind="permutation", folds=folds, best_step=best)
        metrics = report_json["folds"]["mean"] if folds else report_json["splits"]["validation"]["metrics"]
        return TrainResult(final_metrics={**{k: v for k, v in metrics.items() if v is not None}, **summary(report_json)},
                           model_bytes=_serialize(model, spec, split, params),
                           model_format=PYTORCH.model_format, feature_names=tuple(split.feature_names),
                           class_labels=tuple(split.class_labels) if split.class_labels is not None else None,
                           feature_recipe=split.recipe.to_json() if split.recipe else None,
                           evaluation=report_json, best_step=best)


class _Fit:
    """One network learning from one set of rows: its model, optimizer and shuffling generator."""

    def __init__(self, spec: TrainSpec, params: dict, X: np.ndarray, y: np.ndarray, n_outputs: int,
                 device: torch.device, seed: int) -> None:
        self.task, self.batch = spec.task, params["batch_size"]
        self.generator = torch.Generator().manual_seed(seed % 2**63)
        self.model = StandardizedMLP(X.shape[1], params["hidden_sizes"], n_outputs)
        self.model.reset_parameters(self.generator)
        _fit_normalizers(self.model, X, y, spec.task)
        self.model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=params["lr"],
                                          weight_decay=params["weight_decay"])
        self.X, self.y = _tensors(X, y, device)
        self.loss_fn = _loss(spec.task, self.model)
        self.device = device

    def epoch(self, report: Reporter) -> float:
        """One pass over the rows in a fresh order; the mean training loss."""
        model, n = self.model, len(self.y)
        model.train()
        order = torch.randperm(n, generator=self.generator).to(self.device)
        total = 0.0
        for start in range(0, n, self.batch):
            if report.should_stop():
                raise TrainingCancelled()
            rows = order[start:start + self.batch]
            self.optimizer.zero_grad()
            loss, reported = self.loss_fn(model(self.X[rows]), self.y[rows])
            loss.backward()
            self.optimizer.step()
            total += reported * len(rows)
        return total / n


class _Best:
    """Early stopping: the best validation loss so far, its epoch and weights; `stop` once `patience` epochs passed
    without a better one. Without patience it never stops and the last epoch is the best."""

    def __init__(self, patience: int | None, saved: dict | None = None) -> None:
        self.patience = patience
        self.epoch, self.loss, self.state = (saved["epoch"], saved["loss"], saved["state"]) if saved else (0, None,
                                                                                                           None)

    def seen(self, epoch: int, loss: float, model: StandardizedMLP | None) -> None:
        """Epoch `epoch` had validation `loss`; `model` (None: nothing to restore later) is snapshotted if best."""
        if self.patience is None or self.loss is None or loss < self.loss:
            self.epoch, self.loss = epoch, loss
            if self.patience is not None and model is not None:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def stop(self, epoch: int) -> bool:
        return self.patience is not None and epoch - self.epoch >= self.patience

    def restore(self, model: StandardizedMLP) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)

    def saved(self) -> dict | None:
        if self.patience is None:
            return None
        return {"epoch": self.epoch, "loss": self.loss,
                "state": {k: v.detach().cpu() for k, v in self.state.items()} if self.state else None}


def _holdout(spec: TrainSpec, params: dict, split: Split, n_outputs: int, device: torch.device,
             report: Reporter) -> tuple[StandardizedMLP, int]:
    """Train on the training rows, validating after each epoch (resuming from a checkpoint); (model, best epoch)."""
    fit = _Fit(spec, params, split.X_train, split.y_train, n_outputs, device, spec.seed)
    model, epochs = fit.model, params["epochs"]
    X_valid = torch.from_numpy(split.X_valid).to(device)
    architecture = _architecture(model, params)
    best = _Best(params.get("patience"))
    done = 0
    if spec.resume_from is not None:
        done, saved = _resume(spec, model, fit.optimizer, fit.generator, architecture)
        best = _Best(params.get("patience"), saved)
    clock = CheckpointClock(spec, done)
    for epoch in range(done + 1, epochs + 1):
        train_loss = fit.epoch(report)
        scores = validation_metrics(spec.task, split.y_valid, predict(model, X_valid, spec.task))
        metrics = step_metrics(spec.task, train_loss, scores)
        report.step(epoch, epochs, metrics)
        best.seen(epoch, metrics["valid_loss"], model)
        if best.stop(epoch):
            break
        clock.after(epoch, epochs, lambda e=epoch: _checkpoint(spec, model, fit.optimizer, fit.generator,
                                                               architecture, e, best.saved()))
    best.restore(model)
    return model, best.epoch or done


def _cross_validate(spec: TrainSpec, params: dict, split: Split, n_outputs: int, device: torch.device,
                    report: Reporter) -> tuple[StandardizedMLP, int, list[dict[str, float]], np.ndarray]:
    """The k fold networks in lockstep (each epoch reports the folds' mean), then the final network on every row for
    the best mean epoch. (final model, its epochs, each fold's metrics, out-of-fold predictions)."""
    epochs = params["epochs"]
    fits = [_Fit(spec, params, split.X_train[train], split.y_train[train], n_outputs, device, spec.seed + i)
            for i, (train, _) in enumerate(split.folds)]
    valids = [torch.from_numpy(split.X_train[valid]).to(device) for _, valid in split.folds]
    best = _Best(params.get("patience"))
    best_predictions: list[np.ndarray] = []
    for epoch in range(1, epochs + 1):
        losses, predictions, fold_scores = [], [], []
        for fit, X_valid, (_, valid) in zip(fits, valids, split.folds):
            losses.append(fit.epoch(report))
            predictions.append(predict(fit.model, X_valid, spec.task))
            fold_scores.append(step_metrics(spec.task, losses[-1], validation_metrics(
                spec.task, split.y_train[valid], predictions[-1])))
        mean = {k: float(np.mean([s[k] for s in fold_scores])) for k in fold_scores[0]}
        report.step(epoch, epochs, mean)
        if best.loss is None or best.patience is None or mean["valid_loss"] < best.loss:
            best_predictions = predictions
        best.seen(epoch, mean["valid_loss"], None)  # the final model is trained anew for best.epoch epochs
        if best.stop(epoch):
            break
    oof_shape = (len(split.y_train), n_outputs) if spec.task == "multiclass_classification" else len(split.y_train)
    oof, folds = np.zeros(oof_shape), []
    for predicted, (_, valid) in zip(best_predictions, split.folds):
        oof[valid] = predicted
        folds.append(validation_metrics(spec.task, split.y_train[valid], predicted))
    final = _Fit(spec, params, split.X_train, split.y_train, n_outputs, device, spec.seed)
    for _ in range(best.epoch):
        final.epoch(report)
    return final.model, best.epoch, folds, oof


def _predict_numpy(model: StandardizedMLP, X: np.ndarray, task: str, device: torch.device) -> np.ndarray:
    return predict(model, torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device), task)


def training_device(gpus: tuple[int, ...]) -> torch.device:
    """The first CUDA device the runner gave the job; CPU when it gave none (a job that asked for no GPU stays off
    the runner's GPUs, which another job may hold) or CUDA is not there after all."""
    if gpus and torch.cuda.is_available() and gpus[0] < torch.cuda.device_count():
        return torch.device("cuda", gpus[0])
    if gpus:  # a runner that says it has a GPU torch cannot use (a wrong TRAINYARD_RUNNER_GPUS): say so, go on
        log.warning("given CUDA device %d, but torch sees %s: training on the CPU", gpus[0],
                    f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "no CUDA")
    return torch.device("cpu")


def load_model(data: bytes) -> StandardizedMLP:
    """The module saved in `data` (model bytes of format "torch-state-dict"), on CPU, in eval mode."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if saved.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported torch model format_version {saved.get('format_version')!r}")
    model = StandardizedMLP(**saved["architecture"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def _architecture(model: StandardizedMLP, params: dict) -> dict:
    first = next(layer for layer in model.body if isinstance(layer, nn.Linear))
    return {"n_features": first.in_features, "hidden_sizes": list(params["hidden_sizes"]),
            "n_outputs": model.body[-1].out_features}


def _checkpoint(spec: TrainSpec, model: StandardizedMLP, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, architecture: dict, epoch: int, best: dict | None = None) -> bytes:
    numpy_state = np.random.get_state()
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
           "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
           "python": list(_listed(random.getstate()))}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, "task": spec.task,
                "architecture": architecture, "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "rng": rng, "best": best}, buffer)
    return buffer.getvalue()


def _resume(spec: TrainSpec, model: StandardizedMLP, optimizer: torch.optim.Optimizer, generator: torch.Generator,
            architecture: dict) -> tuple[int, dict | None]:
    """Load the checkpoint at `spec.resume_from` into the model, optimizer and RNGs; (the epoch it was taken after,
    early stopping's best so far where it kept one)."""
    saved = torch.load(spec.resume_from, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("kind") != CHECKPOINT_KIND or saved.get(
            "format_version") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{spec.resume_from.name} is not a PyTorch MLP checkpoint of this version")
    if (saved["task"], saved["architecture"]) != (spec.task, architecture):
        raise CheckpointMismatch(f"the checkpoint is of a {saved['task']} model {saved['architecture']}; this job "
                                 f"trains a {spec.task} model {architecture} (retry without from_checkpoint)")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    rng = saved["rng"]
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(saved["epoch"]), saved.get("best")


def _listed(state: tuple) -> tuple:
    """Python's RNG state with its inner tuple as a list (what torch's safe loader takes back)."""
    version, inner, gauss = state
    return version, list(inner), gauss


def _fit_normalizers(model: StandardizedMLP, X: np.ndarray, y: np.ndarray, task: str) -> None:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: mean 0, std 1
        mean = np.nan_to_num(np.nanmean(X, axis=0))
        std = np.nan_to_num(np.nanstd(X, axis=0))
    model.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.x_std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
    if task == "regression":
        model.y_mean.fill_(float(y.mean()))
        model.y_std.fill_(float(y.std()) or 1.0)


def _tensors(X: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)


def _loss(task: str, model: StandardizedMLP):
    """(output, labels) -> (loss to minimize, its value to report)."""
    if task == "binary_classification":
        def binary(out, y):
            loss = nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float())
            return loss, loss.item()
        return binary
    if task == "multiclass_classification":
        def multiclass(out, y):
            loss = nn.functional.cross_entropy(out, y)
            return loss, loss.item()
        return multiclass

    def regression(out, y):  # optimize the scale-free standardized error, report target units
        mse = nn.functional.mse_loss(out.squeeze(1), y)
        return mse / model.y_std.square().squeeze(), mse.item()
    return regression


@torch.no_grad()
def predict(model: StandardizedMLP, X: torch.Tensor, task: str) -> np.ndarray:
    """Validation predictions in validation_metrics' shape: P(class 1), (n, K) probabilities, values."""
    model.eval()
    out = model(X).double()  # float64 so probabilities sum to 1 within sklearn's tolerance
    if task == "binary_classification":
        out = torch.sigmoid(out.squeeze(1))
    elif task == "multiclass_classification":
        out = torch.softmax(out, dim=1)
    else:
        out = out.squeeze(1)
    return out.cpu().numpy()


def _serialize(model: StandardizedMLP, spec: TrainSpec, split: Split, params: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({
        "format_version": FORMAT_VERSION,
        "task": spec.task,
        "architecture": _architecture(model, params),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "feature_names": list(split.feature_names),
        "class_labels": split.class_labels,
    }, buffer)
    return buffer.getvalue()
