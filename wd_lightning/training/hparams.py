"""What TensorBoard's HPARAMS tab holds for one run: a fit and a sweep member fill it alike.

The hyper-parameters are the data module's and the model's saved ones (the model's win a
clash), plus any extra a caller knows (a sweep member's seed); the metrics are the run's final
‖w‖ and held-out loss. Both go to anything with Lightning's ``log_hyperparams(params,
metrics, step=...)``: a ``TensorBoardLogger``, or the sweep's
:class:`~wd_lightning.training.tensorboard.RunWriter`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["FINAL_METRICS", "final_metrics", "log_final_hparams", "run_hyperparameters"]

#: The HPARAMS tab's metric columns: the final held-out loss and total weight norm.
FINAL_METRICS = ("hp/val_loss", "hp/weight_norm")


def run_hyperparameters(module: Any, datamodule: Any = None, **extra: Any) -> dict[str, Any]:
    """The saved hyper-parameters of ``datamodule`` and ``module`` (the module's win), and extra.

    Example:
        >>> from wd_lightning import LinearRegression
        >>> sorted(run_hyperparameters(LinearRegression(weight_decay=3.0), seed=1).items())[-2:]
        [('seed', 1), ('weight_decay', 3.0)]
    """
    return {
        **dict(getattr(datamodule, "hparams", {}) or {}),
        **dict(getattr(module, "hparams", {}) or {}),
        **extra,
    }


def final_metrics(weight_norm: float, val_loss: float | None) -> dict[str, float]:
    """``hp/weight_norm`` and, when there is a finite one, ``hp/val_loss``.

    Example:
        >>> final_metrics(0.39, None)
        {'hp/weight_norm': 0.39}
    """
    metrics = {"hp/weight_norm": float(weight_norm)}
    if val_loss is not None and not math.isnan(float(val_loss)):
        metrics["hp/val_loss"] = float(val_loss)
    return metrics


def log_final_hparams(
    targets: Iterable[Any],
    module: Any,
    datamodule: Any,
    *,
    weight_norm: float,
    val_loss: float | None,
    step: int,
    **extra: Any,
) -> None:
    """Fill the HPARAMS tab of every target with the run's hyper-parameters and final metrics."""
    params = run_hyperparameters(module, datamodule, **extra)
    metrics = final_metrics(weight_norm, val_loss)
    for target in targets:
        target.log_hyperparams(params, metrics, step=step)
