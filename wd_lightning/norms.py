"""L2 norms of groups of tensors with fused multi-tensor kernels (pure PyTorch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["group_norm"]


def group_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖(t₁, …, tₖ)‖₂: the L2 norm of all elements of ``tensors`` together, as a float32 scalar.

    One fused kernel per device and dtype computes every tensor's norm, and no
    value leaves the device, so calling this costs no host synchronisation.
    Norms are accumulated in float32 so bf16 parameters do not lose precision.

    Example:
        >>> group_norm([torch.tensor([3.0]), torch.tensor([[4.0]])])
        tensor(5.)
        >>> group_norm([])
        tensor(0.)
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm([t.detach() for t in tensors], 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms))
