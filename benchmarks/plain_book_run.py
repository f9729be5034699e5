"""The article's λ = 3 run in plain PyTorch: the baseline that bench_fit.py compares against.

It does the work of ``python -m wd_lightning fit`` without Lightning: the same
data and batch order, SGD with decay / no-decay groups, 400 steps, a
validation pass over the 100 held-out examples in one batch after every
epoch, and with ``log_dir`` the same scalars written to TensorBoard at the same
cadence (``train/loss`` and three weight norms every 4 steps, ``val/loss`` and
``val/mse`` from torchmetrics every epoch) plus the checkpoint that the CLI's
default checkpointing writes for a run this short, once at the end. Run it as a
script for the whole-process comparison.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wd_lightning.training.data import EpochSeededSampler, make_linear_data


def run(epochs: int = 100, weight_decay: float = 3.0, log_dir: str | None = None) -> float:
    """Train and return the final ‖w‖."""
    generator = torch.Generator().manual_seed(0)
    X, y = make_linear_data(120, 200, 0.01, 0.05, 0.01, generator)
    X_train, y_train, X_val, y_val = X[:20], y[:20], X[20:], y[20:]
    sampler = EpochSeededSampler(20, seed=0)
    train = DataLoader(TensorDataset(X_train, y_train), batch_size=5, sampler=sampler)
    val = DataLoader(TensorDataset(X_val, y_val), batch_size=100)

    torch.manual_seed(0)
    model = nn.Linear(200, 1)
    nn.init.normal_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(
        [
            {"params": [model.weight], "weight_decay": weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ],
        lr=0.003,
    )
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter
        from torchmetrics import MeanSquaredError

        writer = SummaryWriter(log_dir)
        val_mse = MeanSquaredError()
    step = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        for inputs, targets in train:
            loss = 0.5 * torch.mean((model(inputs) - targets) ** 2)
            optimizer.zero_grad()
            loss.backward()
            if writer is not None and (step + 1) % 4 == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                weight, bias = model.weight.norm().item(), model.bias.norm().item()
                writer.add_scalar("weight_norm/decay", weight, step)
                writer.add_scalar("weight_norm/no_decay", bias, step)
                writer.add_scalar("weight_norm/total", (weight**2 + bias**2) ** 0.5, step)
            optimizer.step()
            step += 1
        model.eval()
        with torch.no_grad():
            for inputs, targets in val:
                predictions = model(inputs)
                val_loss = 0.5 * torch.mean((predictions - targets) ** 2)
                if writer is not None:
                    val_mse.update(predictions, targets)
        if writer is not None:
            writer.add_scalar("val/loss", val_loss.item(), step)
            writer.add_scalar("val/mse", val_mse.compute().item(), step)
            val_mse.reset()
    if writer is not None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, f"{log_dir}/last.ckpt")
        writer.close()
    return model.weight.norm().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tensorboard", action="store_true", help="also log to TensorBoard and checkpoint"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as log_dir:
        norm = run(log_dir=log_dir if args.tensorboard else None)
    print(f"final ‖w‖ = {norm:.4f}")


if __name__ == "__main__":
    main()
