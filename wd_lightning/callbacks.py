"""Callbacks that report on weight decay while a model trains."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.optim import Optimizer

from wd_lightning.cadence import logged_step, logs_this_step
from wd_lightning.errors import check_int_at_least
from wd_lightning.norms import group_norm

__all__ = ["WeightNormMonitor"]


class WeightNormMonitor(Callback):
    """Logs the L2 norm of each optimizer parameter group as ``weight_norm/<group>``.

    Also logs ``weight_norm/total`` over all groups. A group is named by its
    ``"name"`` key (as :func:`wd_lightning.param_groups` sets), else ``pgN``.

    **When.** On the steps where Lightning logs ``train/loss`` (every
    ``trainer.log_every_n_steps`` optimizer steps, unless ``logging_interval``
    is given), once per optimizer step even under gradient accumulation, and
    once more when training ends. The value logged at step *s* is the norm of the
    weights after *s* optimizer steps: the same weights the loss at step *s* was
    computed with (it is taken just before the next optimizer step), so the
    curves line up; the final point is the trained model. Nothing is computed
    between logging steps.

    Args:
        logging_interval: log every this many optimizer steps; ``None`` follows
            the trainer's ``log_every_n_steps``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[WeightNormMonitor()], logger=False)
    """

    def __init__(self, logging_interval: int | None = None) -> None:
        if logging_interval is not None:
            check_int_at_least("logging_interval", logging_interval, 1)
        self.logging_interval = logging_interval

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.loggers and logs_this_step(trainer, self.logging_interval):
            self._log(trainer, optimizer, step=logged_step(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.loggers and trainer.optimizers:
            self._log(trainer, trainer.optimizers[0], step=trainer.global_step)

    @staticmethod
    def norms(optimizer: Optimizer) -> dict[str, Tensor]:
        """The norms this callback logs, keyed by tag, as device tensors."""
        device = next((p.device for g in optimizer.param_groups for p in g["params"]), None)
        result = {
            f"weight_norm/{group.get('name', f'pg{index}')}": group_norm(group["params"]).to(device)
            for index, group in enumerate(optimizer.param_groups)
        }
        result["weight_norm/total"] = torch.linalg.vector_norm(torch.stack(list(result.values())))
        return result

    @rank_zero_only
    def _log(self, trainer: Trainer, optimizer: Optimizer, step: int) -> None:
        tags = self.norms(optimizer)
        # One host synchronisation for all values, not one per tag.
        values = torch.stack(list(tags.values())).tolist()
        metrics: dict[str, Any] = dict(zip(tags, values, strict=True))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
