"""A callback for the multi-process CLI tests: each rank writes what it trained on as JSON.

Given to the CLI as ``--trainer.callbacks tests.distributed_recorder.RankRecorder
--trainer.callbacks.out_dir DIR``; every rank writes ``DIR/rank<R>.json`` when
training ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from wd_lightning.training.module import steps_per_epoch_of


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter; gathering a sharded one is a collective."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class RankRecorder(Callback):
    """Records the training examples of every batch, the groups, and the final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[dict] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        inputs = batch[0]
        table = trainer.datamodule.X_train
        # Which training examples the batch holds: the rows are distinct random vectors.
        matches = (inputs[:, None, :] == table[None, :, :]).all(dim=-1)
        self.batches.append(
            {
                "epoch": trainer.current_epoch,
                "batch": batch_idx,
                "examples": matches.float().argmax(dim=1).tolist(),
            }
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        params = {
            name: param
            for group in optimizer.param_groups
            for name, param in zip(group["param_names"], group["params"], strict=True)
        }
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            # What the optimizer holds and steps: under FSDP2 the shards (the
            # module may still show the gathered weights after its last forward).
            "parameter_types": sorted({type(p).__name__ for p in params.values()}),
            "groups": [
                {
                    "name": group["name"],
                    "param_names": list(group["param_names"]),
                    "weight_decay": group["weight_decay"],
                }
                for group in optimizer.param_groups
            ],
            # As the module prints it when the fit starts (τ in epochs included).
            "report": pl_module.param_groups_report.summary(optimizer, steps_per_epoch_of(trainer)),
            "batches": self.batches,
            "weights": {name: _whole(param).tolist() for name, param in params.items()},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
