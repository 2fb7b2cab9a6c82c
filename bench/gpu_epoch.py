"""GPU epochs: the PyTorch trainer's epoch throughput against a plain PyTorch loop on the same GPU (issue 19).

Both train the same MLP (`--hidden`, Adam, `--batch` rows a step, binary log loss) on the same split of the same
synthetic table (`--rows` x `--features`, a file:// CSV in a scratch folder, loaded by infra/datasets.py as a job's
dataset is), for `--epochs` epochs, with validation metrics after every epoch:
- trainer: `runners.trainers.pytorch_trainer.PyTorchMLPTrainer.fit` with the job given device 0 (`TrainSpec.gpus`),
  as a runner calls it, timed by the step reports it makes after each epoch's validation;
- plain: the loop a user would write: tensors on the device, shuffled index batches, `loss.item()` summed per
  batch, and after each epoch the validation predictions copied to the host for scikit-learn's AUC, accuracy and
  log loss (the same metrics the trainer reports).
The first epoch of each is a warm-up (CUDA context, kernels, allocator) and is left out: throughput is epochs 2..N
per second and rows per second. The two run alternately `--repeats` times; medians are printed.
Ends with `ratio=` (trainer ÷ plain epochs per second). Goal (issue 19): ≥ 2.

Runs only on a device machine: without a CUDA device it prints "no CUDA device: skipped" and exits 0.
`--cpu` runs both on the CPU anyway, with small sizes, to check the script itself (its figures mean nothing).

    python -m bench.gpu_epoch [--rows 200000] [--features 32] [--hidden 256,256] [--batch 1024] [--epochs 10]
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import parser, print_ratio, work_dir


def synthetic_csv(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """A binary classification table: a noisy linear rule over the features, as `f0..fN, target`."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    w = rng.standard_normal(features).astype(np.float32)
    y = ((X @ w + rng.standard_normal(rows).astype(np.float32)) > 0).astype(np.int8)
    header = ",".join([*(f"f{i}" for i in range(features)), "target"])
    table = np.column_stack([X, y]).astype(np.float32)
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=["%.5f"] * features + ["%d"])


class Clock:
    """A Reporter that notes when each epoch's report came (after its validation)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last: dict[str, float] = {}

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.times.append(time.perf_counter())
        self.last = metrics

    def should_stop(self) -> bool:
        return False


def per_second(times: list[float]) -> float:
    """Epochs per second over epochs 2..N (the first, a warm-up, left out)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def run_trainer(uri: str, roots: tuple[Path, ...], params: dict[str, Any], gpu: bool) -> tuple[float, dict]:
    from runners.trainers import TrainSpec
    from runners.trainers.pytorch_trainer import PyTorchMLPTrainer

    clock = Clock()
    spec = TrainSpec(framework="pytorch", task="binary_classification", dataset_uri=uri, target="target",
                     params=params, dataset_roots=roots, gpus=(0,) if gpu else ())
    PyTorchMLPTrainer().fit(spec, clock)  # type: ignore[arg-type]
    return per_second(clock.times), clock.last


def run_plain(uri: str, roots: tuple[Path, ...], params: dict[str, Any], gpu: bool) -> tuple[float, dict]:
    import torch
    from torch import nn

    from infra.datasets import load_dataset
    from runners.trainers import validation_metrics

    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    split = load_dataset(uri, "target", "binary_classification", seed=0, roots=roots)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = split.X_train.shape[1]
    for size in params["hidden_sizes"]:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, 1)).to(device)
    mean, std = split.X_train.mean(axis=0), split.X_train.std(axis=0) + 1e-6
    X = torch.from_numpy((split.X_train - mean) / std).float().to(device)
    y = torch.from_numpy(split.y_train).float().to(device)
    X_valid = torch.from_numpy((split.X_valid - mean) / std).float().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    loss_fn = nn.BCEWithLogitsLoss()
    n, batch = len(y), params["batch_size"]
    times: list[float] = []
    scores: dict[str, float] = {}
    for _ in range(params["epochs"]):
        model.train()
        order = torch.randperm(n, device=device)
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(X[rows]).squeeze(1), y[rows])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        model.eval()
        with torch.no_grad():
            probability = torch.sigmoid(model(X_valid).squeeze(1)).cpu().numpy()
        scores = {"train_loss": total / n, **validation_metrics("binary_classification", split.y_valid, probability)}
        times.append(time.perf_counter())
    return per_second(times), scores


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", default="256,256", help="hidden layer sizes, comma-separated")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="run on the CPU anyway (checks the script, not the figures)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        print("no CUDA device: skipped (torch is not installed)")
        return 0
    gpu = torch.cuda.is_available()
    if not gpu and not args.cpu:
        print("no CUDA device: skipped")
        return 0
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    params = {"epochs": args.epochs, "hidden_sizes": [int(h) for h in args.hidden.split(",")], "lr": 1e-3,
              "batch_size": args.batch}
    with work_dir("trainyard-gpu-epoch-") as work:
        data = work / "table.csv"
        synthetic_csv(data, args.rows, args.features)
        uri, roots = f"file://{data}", (work,)
        print(f"device={device} rows={args.rows} features={args.features} hidden={args.hidden} batch={args.batch} "
              f"epochs={args.epochs} repeats={args.repeats}", flush=True)
        trainer, plain = [], []
        for i in range(args.repeats):
            t, t_scores = run_trainer(uri, roots, params, gpu)
            q, q_scores = run_plain(uri, roots, params, gpu)
            trainer.append(t)
            plain.append(q)
            print(f"repeat {i + 1}: trainer {t:.2f} epochs/s (valid_auc {t_scores.get('valid_auc', float('nan')):.4f})"
                  f", plain {q:.2f} epochs/s (auc {q_scores.get('auc', float('nan')):.4f})", flush=True)
    train_rows = int(args.rows * 0.8)
    t_med, q_med = statistics.median(trainer), statistics.median(plain)
    figures = {"device": device, "trainer_epochs_per_s": t_med, "plain_epochs_per_s": q_med,
               "trainer_rows_per_s": t_med * train_rows, "plain_rows_per_s": q_med * train_rows,
               "ratio": t_med / q_med, "params": params, "rows": args.rows, "features": args.features}
    print(f"trainer_epochs_per_s={t_med:.3f} plain_epochs_per_s={q_med:.3f} "
          f"trainer_rows_per_s={t_med * train_rows:,.0f} plain_rows_per_s={q_med * train_rows:,.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print_ratio(t_med / q_med, note=" (trainer ÷ plain epochs per second; goal ≥ 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
