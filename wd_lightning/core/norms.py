"""L2 norms of many tensors at once, with fused multi-tensor kernels (pure PyTorch).

Everything here stays on the device: no function reads a value back to the
host, so none of them waits for the accelerator. Sharded tensors (``DTensor``,
as FSDP2 and tensor parallelism make them) are measured whole: each rank
measures its shard and one all-reduce per device mesh adds the shards up, so
every rank of the mesh must make the same call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wd_lightning.core.sharding import dtensor_type, local_part

__all__ = [
    "group_norm",
    "segment_norms",
    "snapshot",
    "squared_distances",
    "squared_norms",
    "stacked_squared_norms",
]


def squared_norms(tensors: Sequence[Tensor]) -> Tensor:
    """‖tᵢ‖² for each tensor: a float32 vector of ``len(tensors)`` on the first tensor's device.

    One fused ``torch._foreach_norm`` kernel per device and dtype measures all
    tensors, accumulating in float32 (so bf16 tensors lose nothing; float64
    ones are accumulated in float64). A
    ``DTensor`` counts as the whole tensor it is a shard of: each rank sums its
    shard's squares and the ranks that hold different shards add them up, with
    one all-reduce per device mesh (replicated copies are counted once).

    Example:
        >>> squared_norms([torch.tensor([3.0, 4.0]), torch.ones(2, 2, dtype=torch.bfloat16)])
        tensor([25.,  4.])
        >>> squared_norms([])
        tensor([])
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    squares = _local_squares([local_part(t.detach()) for t in tensors])
    return torch.stack(_sum_over_shards(squares, tensors))


def stacked_squared_norms(tensors: Sequence[Tensor]) -> Tensor:
    """‖tᵢ[m]‖² for each tensor ``i`` and each slice ``m`` along its leading dimension.

    The tensors of a vectorised ensemble carry one member per leading slice; the
    result, ``(len(tensors), members)`` in float32, holds each member's squared
    norm of each tensor. Combine it with :func:`segment_norms` for group norms.

    Example:
        >>> stacked_squared_norms([torch.tensor([[3.0, 4.0], [1.0, 0.0]])])
        tensor([[25.,  1.]])
    """
    return torch.stack([t.detach().float().square().flatten(1).sum(1) for t in tensors])


def squared_distances(tensors: Sequence[Tensor], snapshots: Sequence[Tensor]) -> Tensor:
    """‖tᵢ − sᵢ‖² for each pair, where ``snapshots`` came from :func:`snapshot` of ``tensors``.

    The snapshots are consumed: one fused kernel per device and dtype
    overwrites them with the differences, so no second copy of the tensors is
    allocated. The norms are taken as in :func:`squared_norms`, sharded tensors
    measured whole.

    Example:
        >>> weights = [torch.tensor([1.0, 1.0])]
        >>> before = snapshot(weights)
        >>> _ = weights[0].mul_(0.5)
        >>> squared_distances(weights, before)
        tensor([0.5000])
    """
    if len(tensors) != len(snapshots):
        raise ValueError(f"{len(tensors)} tensors but {len(snapshots)} snapshots")
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    differences = list(snapshots)
    torch._foreach_sub_(differences, [local_part(t.detach()) for t in tensors])
    return torch.stack(_sum_over_shards(_local_squares(differences), tensors))


def snapshot(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Copies of ``tensors`` (of each rank's shard, for a ``DTensor``), made by one fused kernel.

    The copies take as much memory as the tensors; drop them as soon as they
    have served.

    Example:
        >>> weights = [torch.tensor([1.0, 2.0])]
        >>> copies = snapshot(weights)
        >>> _ = weights[0].zero_()
        >>> copies
        [tensor([1., 2.])]
    """
    if not tensors:
        return []
    return list(torch._foreach_mul([local_part(t.detach()) for t in tensors], 1.0))


def segment_norms(squares: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """√(Σ squares) within each segment: ``segment_ids[i]`` says which segment ``squares[i]`` joins.

    ``segment_ids`` must be an integer tensor on the device of ``squares``.
    Segments no square joins have norm 0. ``squares`` may carry trailing
    dimensions (one column per ensemble member): each column is summed apart.

    Example:
        >>> segment_norms(torch.tensor([9.0, 16.0, 4.0]), torch.tensor([0, 0, 2]), 3)
        tensor([5., 0., 2.])
    """
    # A membership matrix product rather than index_add_: deterministic on every
    # device (no atomics), and nothing is read back to the host.
    segments = torch.arange(num_segments, device=squares.device)
    membership = (segment_ids[None, :] == segments[:, None]).to(squares.dtype)
    return (membership @ squares).sqrt()


def group_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖(t₁, …, tₖ)‖₂: the L2 norm of all elements of ``tensors`` together, as a float32 scalar.

    Measured as in :func:`squared_norms`: fused kernels, no host
    synchronisation, float32 accumulation, sharded tensors counted whole.

    Example:
        >>> group_norm([torch.tensor([3.0]), torch.tensor([[4.0]])])
        tensor(5.)
        >>> group_norm([])
        tensor(0.)
    """
    return squared_norms(tensors).sum().sqrt()


def _local_squares(local: Sequence[Tensor]) -> list[Tensor]:
    """Float32 0-d squared norms of plain tensors, on the first tensor's device."""
    device = local[0].device
    # float64 tensors are measured in float64 (torch refuses to narrow), the rest in float32.
    batches: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(local):
        accumulate = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        batches.setdefault((tensor.device, accumulate), []).append(index)
    squares: list[Tensor] = [torch.empty(0)] * len(local)
    for (_, accumulate), indices in batches.items():
        norms = torch._foreach_norm([local[i] for i in indices], 2, dtype=accumulate)
        for index, norm in zip(indices, norms, strict=True):
            squares[index] = norm.to(device, torch.float32)
    return list(torch.stack(squares).square().unbind())


def _sum_over_shards(squares: list[Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
    """Add up, across the ranks that hold different shards, the squares of sharded tensors."""
    dtensor = dtensor_type()
    if dtensor is None:
        return squares
    # One all-reduce per (mesh, sharded mesh dimensions), in the tensors' order,
    # which is the same on every rank.
    layouts: dict[tuple[object, tuple[int, ...]], list[int]] = {}
    for index, tensor in enumerate(tensors):
        if isinstance(tensor, dtensor):
            dims = tuple(d for d, p in enumerate(tensor.placements) if p.is_shard())
            if dims:
                layouts.setdefault((tensor.device_mesh, dims), []).append(index)
    if not layouts:
        return squares
    import torch.distributed as dist

    squares = list(squares)
    for (mesh, dims), indices in layouts.items():
        shard_sums = torch.stack([squares[i] for i in indices]).to(_mesh_device(mesh))
        for dim in dims:
            dist.all_reduce(shard_sums, group=mesh.get_group(dim))
        for index, total in zip(indices, shard_sums.to(squares[0].device).unbind(), strict=True):
            squares[index] = total
    return squares


def _mesh_device(mesh: object) -> torch.device:
    device_type = mesh.device_type  # type: ignore[attr-defined]
    if device_type == "cpu":
        return torch.device("cpu")
    return torch.device(device_type, getattr(torch, device_type).current_device())
