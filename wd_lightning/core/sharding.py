"""Sharded tensors (``DTensor``, as FSDP2 and tensor parallelism make them), seen from one rank.

torch may be built without distributed support, and older versions keep ``DTensor`` under a
private path; every other module asks here rather than importing it itself.
"""

from __future__ import annotations

import functools

from torch import Tensor

__all__ = ["dtensor_type", "is_sharded", "local_part", "whole"]


@functools.cache
def dtensor_type() -> type | None:
    """The ``DTensor`` class, or ``None`` where torch has no distributed support.

    Example:
        >>> dtensor_type().__name__
        'DTensor'
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        try:  # torch < 2.4 keeps it under its first, private name
            from torch.distributed._tensor import DTensor
        except ImportError:  # torch built without distributed support
            return None
    return DTensor


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (each rank holds a part of it, or a replica).

    Example:
        >>> import torch
        >>> is_sharded(torch.zeros(2))
        False
    """
    dtensor = dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def local_part(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` this rank holds; a partial sum is completed first.

    A plain tensor is its own local part.

    Example:
        >>> import torch
        >>> local_part(torch.ones(2))
        tensor([1., 1.])
    """
    if not is_sharded(tensor):
        return tensor
    if any(placement.is_partial() for placement in tensor.placements):  # type: ignore[attr-defined]
        # Never a parameter's layout; squares of partial sums would not add up.
        return tensor.full_tensor()  # type: ignore[attr-defined]
    return tensor.to_local()  # type: ignore[attr-defined]


def whole(tensor: Tensor) -> Tensor:
    """The full tensor: a ``DTensor`` is gathered (a collective every rank must join).

    Example:
        >>> import torch
        >>> whole(torch.ones(2))
        tensor([1., 1.])
    """
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]
