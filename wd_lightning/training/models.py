"""The book's model: linear regression on top of :class:`WeightDecayModule`."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanSquaredError

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite,
    check_finite_non_negative,
    check_int_at_least,
)
from wd_lightning.core.grouping import DecayRules
from wd_lightning.core.losses import HalfMSELoss
from wd_lightning.training.module import Penalty, WeightDecayModule

__all__ = ["MLP", "LinearRegression", "SmallConvNet"]


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
        decay_rules: see :class:`WeightDecayModule`; the default decays the weight only.

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
        decay_rules: DecayRules | None = None,
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
            decay_rules=decay_rules,
        )


class MLP(nn.Module):
    """A plain multilayer perceptron: [Linear → norm → ReLU] per hidden layer, then Linear.

    A model that is not the book's, for :class:`WeightDecayModule` to train
    (see ``configs/mlp_classifier.yaml``). It is an ``nn.Module``, not a
    LightningModule: any model can be handed over the same way.

    Args:
        in_features: input features.
        hidden_features: width of each hidden layer.
        out_features: outputs (classes for a classifier).
        norm: ``"batch"``, ``"layer"`` or ``None``: a normalisation layer after each hidden Linear.

    Example:
        >>> import torch
        >>> MLP(4, [8, 8], 3)(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: list[int],
        out_features: int,
        norm: Literal["batch", "layer"] | None = "batch",
    ) -> None:
        super().__init__()
        check_int_at_least("in_features", in_features, 1)
        check_int_at_least("out_features", out_features, 1)
        if norm not in ("batch", "layer", None):
            raise InvalidArgumentError("norm", norm, "'batch', 'layer' or None")
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_features:
            layers.append(nn.Linear(width, check_int_at_least("hidden_features", hidden, 1)))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            elif norm == "layer":
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.ReLU())
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.layers(inputs)


class SmallConvNet(nn.Module):
    """A small image classifier: two 3×3 convolutions, a 2×2 max-pool, then two Linear layers.

    ``[Conv → ReLU] × 2 → MaxPool(2) → Flatten → Linear → ReLU → Linear``. Sized for
    the 8×8 digits of :class:`~wd_lightning.training.digits.DigitsDataModule`
    (see ``configs/digits_fit.yaml``); with the default grouping rule its two
    convolution kernels and two Linear weights decay, the biases do not. It
    has no normalisation layer, so λ acts on the function the net computes
    rather than only on its weights' scale.

    Args:
        in_channels: image channels.
        image_size: height = width of the images, even.
        channels: output channels of the two convolutions.
        hidden_features: width of the hidden Linear layer.
        num_classes: outputs.

    Example:
        >>> import torch
        >>> net = SmallConvNet()
        >>> net(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
        >>> sum(p.numel() for p in net.parameters())
        9802
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        channels: tuple[int, int] = (8, 16),
        hidden_features: int = 32,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        check_int_at_least("in_channels", in_channels, 1)
        check_int_at_least("image_size", image_size, 2)
        if image_size % 2:
            raise InvalidArgumentError("image_size", image_size, "an even number (one 2×2 pool)")
        channels = tuple(channels)
        if len(channels) != 2:
            raise InvalidArgumentError("channels", list(channels), "two channel counts")
        first, second = (check_int_at_least("channels", c, 1) for c in channels)
        check_int_at_least("hidden_features", hidden_features, 1)
        check_int_at_least("num_classes", num_classes, 2)
        pooled = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * pooled * pooled, hidden_features),
            nn.ReLU(),
            nn.Linear(hidden_features, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))
