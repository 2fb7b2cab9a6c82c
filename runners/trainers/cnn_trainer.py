"""A small convolutional network for task image_classification, behind the Trainer protocol (framework "pytorch").

The dataset is infra/image_folders.py's (builtin://digits or an ImageFolder archive): rows of pixels, channels first,
on the dataset's own scale, their shape in the split's recipe (`recipe.image`). The network takes those rows as they
are (n, C*H*W), so serving and ONNX export feed it exactly what the loader produced: it reshapes them to images,
standardises each channel by the training images' mean and std, then runs `channels` blocks of a 3x3 convolution,
ReLU and 2x2 max-pooling (pooling stops at a 1-pixel side), and `hidden_sizes` dense layers to K logits.

One step is one epoch of Adam over shuffled mini-batches, validated after it (`valid_loss`, `valid_accuracy`);
`patience` stops early and keeps the best epoch's weights; `augment` (off by default) shifts each training image by up
to an eighth of its side, a fresh draw every batch. Checkpoints, resume and determinism are the MLP's
(runners/trainers/pytorch_trainer.py, whose helpers this reuses): a checkpoint records the architecture, so an MLP's
cannot resume a CNN. Validation is holdout (default 80/20, stratified) with an optional test split; k-fold is refused.
Model bytes are the MLP's format with `architecture["kind"] = "cnn"`; `load_network` loads either.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import nn

from domain.frameworks import MAX_TORCH_PARAMETERS, PYTORCH
from domain.validation import Validation
from infra.datasets import Split, load_dataset
from runners.trainers import (
    CheckpointClock, ParamsError, Reporter, TrainingCancelled, TrainResult, TrainSpec, resolve_params, step_metrics,
    validation_metrics,
)
from runners.trainers import pytorch_trainer as mlp
from runners.trainers.evaluation import evaluation_report, summary

DEFAULT_CHANNELS = (16, 32)
PREDICT_BATCH = 256  # images per forward pass when predicting: bounds the activations' memory
AS_MULTICLASS = "multiclass_classification"  # what its predictions look like to validation_metrics and `predict`


class ImageCNN(nn.Module):
    """Pixel rows (n, C*H*W) on the dataset's scale in; (n, K) logits out."""

    def __init__(self, n_features: int, image: list[int], channels: list[int], hidden_sizes: list[int],
                 n_outputs: int, kind: str = "cnn") -> None:
        super().__init__()
        c, h, w = image
        if c * h * w != n_features:
            raise ValueError(f"an image of {c} x {h} x {w} is not {n_features} inputs")
        self.shape = (c, h, w)
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = []
        width = c * h * w
        for size in hidden_sizes:
            dense += [nn.Linear(width, size), nn.ReLU()]
            width = size
        dense.append(nn.Linear(width, n_outputs))
        self.head = nn.Sequential(*dense)
        self.register_buffer("x_mean", torch.zeros(1, image[0], 1, 1))
        self.register_buffer("x_std", torch.ones(1, image[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.reshape(-1, *self.shape) - self.x_mean) / self.x_std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)  # a missing pixel is the channel's mean
        return self.head(torch.flatten(self.features(z), 1))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisation of each layer, drawn from `generator`."""
        for layer in [*self.features, *self.head]:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.weight[0].numel())
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def parameter_count(architecture: dict) -> int:
    return sum(p.numel() for p in ImageCNN(**architecture).parameters())


class CNNTrainer:
    """Trainer for framework "pytorch" on task image_classification. Stateless."""

    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        params = resolve_params("pytorch", spec.task, spec.params)
        validation = Validation.parse(spec.validation)
        if validation.strategy == "kfold":
            raise ParamsError("validation.strategy", "image_classification validates on a holdout (or time_series "
                              "in file order); k-fold is not offered for images")
        split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=spec.dataset_roots,
                             validation=validation)
        shape = split.recipe.image
        architecture = {"kind": "cnn", "n_features": shape.n_inputs, "image": [shape.channels, shape.height,
                                                                               shape.width],
                        "channels": list(params.get("channels") or DEFAULT_CHANNELS),
                        "hidden_sizes": list(params["hidden_sizes"]), "n_outputs": split.n_classes}
        if (count := parameter_count(architecture)) > MAX_TORCH_PARAMETERS:
            raise ParamsError("params.channels", f"the network would have {count:,} parameters on "
                              f"{shape.height} x {shape.width} images; at most {MAX_TORCH_PARAMETERS:,}")
        torch.set_num_threads(params["num_threads"])
        device = mlp.training_device(spec.gpus)
        model, best = _holdout(spec, params, split, architecture, device, report)
        evaluated = {"validation": (split.y_valid, predict(model, split.X_valid, device), split.valid_rows)}
        if split.has_test:
            evaluated["test"] = (split.y_test, predict(model, split.X_test, device), split.test_rows)
        report_json = evaluation_report(spec.task, evaluated, split.class_labels, best_step=best)
        metrics = report_json["splits"]["validation"]["metrics"]
        return TrainResult(final_metrics={**{k: v for k, v in metrics.items() if v is not None}, **summary(report_json)},
                           model_bytes=_serialize(model, spec, split, architecture),
                           model_format=PYTORCH.model_format, class_labels=tuple(split.class_labels),
                           feature_recipe=split.recipe.to_json(), evaluation=report_json, best_step=best)


def _holdout(spec: TrainSpec, params: dict, split: Split, architecture: dict, device: torch.device,
             report: Reporter) -> tuple[ImageCNN, int]:
    """Train on the training images, validating after each epoch (resuming from a checkpoint); (model, best epoch)."""
    generator = torch.Generator().manual_seed(spec.seed % 2**63)
    model = ImageCNN(**architecture)
    model.reset_parameters(generator)
    _fit_normalizer(model, split.X_train)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    X, y = torch.from_numpy(split.X_train).to(device), torch.from_numpy(split.y_train).to(device)
    epochs, best, done = params["epochs"], mlp._Best(params.get("patience")), 0
    if spec.resume_from is not None:
        done, saved = mlp._resume(spec, model, optimizer, generator, architecture)
        best = mlp._Best(params.get("patience"), saved)
    clock = CheckpointClock(spec, done)
    for epoch in range(done + 1, epochs + 1):
        train_loss = _epoch(model, optimizer, generator, X, y, params, report)
        scores = validation_metrics(spec.task, split.y_valid, predict(model, split.X_valid, device))
        metrics = step_metrics(spec.task, train_loss, scores)
        report.step(epoch, epochs, metrics)
        best.seen(epoch, metrics["valid_loss"], model)
        if best.stop(epoch):
            break
        clock.after(epoch, epochs, lambda e=epoch: mlp._checkpoint(spec, model, optimizer, generator, architecture,
                                                                   e, best.saved()))
    best.restore(model)
    return model, best.epoch or done


def _epoch(model: ImageCNN, optimizer: torch.optim.Optimizer, generator: torch.Generator, X: torch.Tensor,
           y: torch.Tensor, params: dict, report: Reporter) -> float:
    """One pass over the training images in a fresh order; the mean training loss."""
    model.train()
    order = torch.randperm(len(y), generator=generator).to(X.device)
    total, batch = 0.0, params["batch_size"]
    for start in range(0, len(y), batch):
        if report.should_stop():
            raise TrainingCancelled()
        rows = order[start:start + batch]
        images = _shifted(X[rows], model.shape, generator) if params.get("augment") else X[rows]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), y[rows])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(rows)
    return total / len(y)


def _shifted(rows: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to an eighth of its side (at least 1 pixel) in each direction, the gap black."""
    c, h, w = shape
    pad = max(1, min(h, w) // 8)
    images = nn.functional.pad(rows.reshape(-1, c, h, w), (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, len(rows)), generator=generator)).tolist()
    out = torch.stack([images[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])
    return out.reshape(len(rows), -1)


@torch.no_grad()
def predict(model: ImageCNN, X: np.ndarray, device: torch.device) -> np.ndarray:
    """(n, K) class probabilities, float64, in batches of PREDICT_BATCH images."""
    parts = [mlp.predict(model, torch.from_numpy(np.ascontiguousarray(X[i:i + PREDICT_BATCH], dtype=np.float32))
                         .to(device), AS_MULTICLASS) for i in range(0, len(X), PREDICT_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, model.head[-1].out_features))


def load_network(data: bytes) -> nn.Module:
    """The module saved in `data` (model bytes of format "torch-state-dict"): the CNN or the MLP, on CPU, in eval."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or (saved.get("architecture") or {}).get("kind") != "cnn":
        return mlp.load_model(data)
    if saved.get("format_version") != mlp.FORMAT_VERSION:
        raise ValueError(f"unsupported torch model format_version {saved.get('format_version')!r}")
    model = ImageCNN(**saved["architecture"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def _fit_normalizer(model: ImageCNN, X: np.ndarray) -> None:
    images = X.reshape(len(X), model.shape[0], -1)
    mean, std = images.mean(axis=(0, 2)), images.std(axis=(0, 2))
    model.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    model.x_std.copy_(torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32).view(1, -1, 1, 1))


def _serialize(model: ImageCNN, spec: TrainSpec, split: Split, architecture: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format_version": mlp.FORMAT_VERSION, "task": spec.task, "architecture": architecture,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "feature_names": [],
                "class_labels": split.class_labels}, buffer)
    return buffer.getvalue()
