"""The article's loss, ½·mean((ŷ − y)²), written once for a fit, a sweep and the closed forms.

The ½ makes the gradient of the data term ``mean(ŷ − y)·∂ŷ`` with no stray factor 2, so the
penalty ``λ/2·‖w‖²`` and the loss share one scale, as in the article.
"""

from __future__ import annotations

from torch import Tensor, nn

from wd_lightning.core.errors import BatchMismatchError

__all__ = ["HalfMSELoss", "half_mse", "half_mse_per_member"]


def half_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """½·(ŷ − y)² averaged over every element, as a 0-d tensor.

    Example:
        >>> import torch
        >>> half_mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
        tensor(1.2500)
    """
    return 0.5 * (predictions - targets).square().mean()


def half_mse_per_member(predictions: Tensor, targets: Tensor) -> Tensor:
    """:func:`half_mse` of each slice along the leading (member) dimension: shape ``(members,)``.

    ``predictions`` holds one prediction per member, ``(members, *targets.shape)``;
    the targets are shared.

    Example:
        >>> import torch
        >>> half_mse_per_member(torch.tensor([[1.0, 3.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0]))
        tensor([1.2500, 0.0000])
    """
    return 0.5 * (predictions - targets).square().flatten(1).mean(1)


class HalfMSELoss(nn.Module):
    """:func:`half_mse` as a module, refusing targets whose shape differs from the predictions'.

    Example:
        >>> import torch
        >>> HalfMSELoss()(torch.tensor([[2.0]]), torch.tensor([[0.0]]))
        tensor(2.)
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape:
            # (N, 1) − (N,) broadcasts to (N, N): a wrong loss that trains without complaint.
            raise BatchMismatchError(
                "targets",
                tuple(target.shape),
                f"the model predicts shape {tuple(prediction.shape)}, and ½-MSE needs targets "
                "of the same shape (it would broadcast them to a different loss)",
            )
        return half_mse(prediction, target)
