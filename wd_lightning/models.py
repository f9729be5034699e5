"""The book's model: linear regression on top of :class:`WeightDecayModule`."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanSquaredError

from wd_lightning.errors import check_finite, check_finite_non_negative, check_int_at_least
from wd_lightning.module import HalfMSELoss, Penalty, WeightDecayModule

__all__ = ["LinearRegression"]


class LinearRegression(WeightDecayModule):
    """``nn.Linear(num_inputs, 1)`` with w ~ N(0, init_std²) and b = bias_init, trained on ½-MSE.

    ``LinearRegression()`` with a default :class:`~wd_lightning.SyntheticRegressionDataModule`
    is the article's λ = 3 run; ``weight_decay=0`` is its overfitting baseline.
    The initial weights come from the global seed (``seed_everything``), the
    data from the data module's own seed.

    Args:
        num_inputs: input dimension; the CLI links it from the data module.
        weight_decay: λ (the article: 3).
        optimizer: see :class:`WeightDecayModule`; defaults to SGD, lr 0.003.
        lr_scheduler: optional, called with the optimizer.
        penalty: ``"optimizer"`` (SGD's ``weight_decay``) or ``"loss"`` (λ/2·‖w‖² in the loss).
        init_std: standard deviation of the initial weights (the article: 1).
        bias_init: initial bias (the article's from-scratch version: 0).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = LinearRegression()
        >>> model.model.weight.shape, model.model.bias.item()
        (torch.Size([1, 200]), 0.0)
        >>> model(torch.zeros(2, 200)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        num_inputs: int = 200,
        weight_decay: float = 3.0,
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.003),
        lr_scheduler: LRSchedulerCallable | None = None,
        penalty: Penalty = "optimizer",
        init_std: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        check_int_at_least("num_inputs", num_inputs, 1)
        init_std = check_finite_non_negative("init_std", init_std)
        bias_init = check_finite("bias_init", bias_init)
        linear = nn.Linear(num_inputs, 1)
        nn.init.normal_(linear.weight, mean=0.0, std=init_std)
        nn.init.constant_(linear.bias, bias_init)
        super().__init__(
            model=linear,
            weight_decay=weight_decay,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            penalty=penalty,
            loss=HalfMSELoss(),
            val_metrics={"mse": MeanSquaredError()},
        )
