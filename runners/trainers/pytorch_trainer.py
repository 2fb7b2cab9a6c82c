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

import numpy as np
import torch
from torch import nn

from domain.frameworks import PYTORCH
from infra.datasets import Split, load_dataset
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
        split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=spec.dataset_roots)
        n_outputs = split.n_classes if spec.task == "multiclass_classification" else 1
        check_budget("pytorch", params, split.X_train.shape[1], n_outputs)
        torch.set_num_threads(params["num_threads"])
        device = training_device(spec.gpus)
        generator = torch.Generator().manual_seed(spec.seed % 2**63)
        model = StandardizedMLP(split.X_train.shape[1], params["hidden_sizes"], n_outputs)
        model.reset_parameters(generator)
        _fit_normalizers(model, split, spec.task)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        X, y = _tensors(split.X_train, split.y_train, device)
        X_valid = torch.from_numpy(split.X_valid).to(device)
        loss_fn = _loss(spec.task, model)
        n, batch = len(y), params["batch_size"]
        architecture = _architecture(model, params)
        done = _resume(spec, model, optimizer, generator, architecture) if spec.resume_from is not None else 0
        clock = CheckpointClock(spec, done)
        scores = None
        for epoch in range(done + 1, params["epochs"] + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            total = 0.0
            for start in range(0, n, batch):
                if report.should_stop():
                    raise TrainingCancelled()
                rows = order[start:start + batch]
                optimizer.zero_grad()
                loss, reported = loss_fn(model(X[rows]), y[rows])
                loss.backward()
                optimizer.step()
                total += reported * len(rows)
            scores = validation_metrics(spec.task, split.y_valid, predict(model, X_valid, spec.task))
            report.step(epoch, params["epochs"], step_metrics(spec.task, total / n, scores))
            clock.after(epoch, params["epochs"], lambda e=epoch: _checkpoint(spec, model, optimizer, generator,
                                                                             architecture, e))
        if scores is None:  # resumed at or past its last epoch: nothing left to train
            scores = validation_metrics(spec.task, split.y_valid, predict(model, X_valid, spec.task))
        return TrainResult(final_metrics=scores, model_bytes=_serialize(model, spec, split, params),
                           model_format=PYTORCH.model_format, feature_names=tuple(split.feature_names),
                           class_labels=tuple(split.class_labels) if split.class_labels is not None else None,
                           feature_recipe=split.recipe.to_json() if split.recipe else None)


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
                generator: torch.Generator, architecture: dict, epoch: int) -> bytes:
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
                "optimizer": optimizer.state_dict(), "rng": rng}, buffer)
    return buffer.getvalue()


def _resume(spec: TrainSpec, model: StandardizedMLP, optimizer: torch.optim.Optimizer, generator: torch.Generator,
            architecture: dict) -> int:
    """Load the checkpoint at `spec.resume_from` into the model, optimizer and RNGs; the epoch it was taken after."""
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
    return int(saved["epoch"])


def _listed(state: tuple) -> tuple:
    """Python's RNG state with its inner tuple as a list (what torch's safe loader takes back)."""
    version, inner, gauss = state
    return version, list(inner), gauss


def _fit_normalizers(model: StandardizedMLP, split: Split, task: str) -> None:
    mean = np.nan_to_num(np.nanmean(split.X_train, axis=0))  # an all-missing column: mean 0, std 1
    std = np.nan_to_num(np.nanstd(split.X_train, axis=0))
    model.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.x_std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
    if task == "regression":
        model.y_mean.fill_(float(split.y_train.mean()))
        model.y_std.fill_(float(split.y_train.std()) or 1.0)


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
