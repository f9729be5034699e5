"""Splitting a sweep's members across processes, devices and nodes.

Lightning's ``DDPStrategy`` starts the processes (itself, or under torchrun
or SLURM) and wraps the model in ``DistributedDataParallel``, which averages
gradients across processes. A sweep's processes hold *different* members, so
:class:`MemberParallelStrategy` keeps the launcher and the process group but
leaves the model unwrapped, keeps torchmetrics from combining the processes'
states, and gives every process the whole dataset: each
process trains its own share of the members exactly as one process would
train them all, and nothing is averaged.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torchmetrics import Metric

__all__ = ["MemberParallelStrategy", "gather_to_rank_zero", "member_share"]


class MemberParallelStrategy(DDPStrategy):
    """``DDPStrategy`` minus gradient averaging and data sharding: a share of members per process.

    Used by :func:`~wd_lightning.sweep.run.run_sweep` when the trainer has
    more than one process (``--trainer.devices``, ``--trainer.num_nodes``);
    processes are started by Lightning's launcher, torchrun or SLURM, as for
    DDP.

    Example:
        >>> MemberParallelStrategy().distributed_sampler_kwargs
        {'num_replicas': 1, 'rank': 0}
    """

    def configure_ddp(self) -> None:
        # No DistributedDataParallel wrapper: it would average the gradients of
        # different members (and needs the same parameter shapes on every process).
        # Likewise torchmetrics would combine its states across the processes,
        # i.e. across different members: each process computes its own.
        for module in self.lightning_module.modules():
            if isinstance(module, Metric):
                module.sync_on_compute = False
                module.dist_sync_on_step = False
                # torchmetrics copies sync_on_compute into _to_sync when the metric is built.
                module._to_sync = False

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Every member sees every batch, in the order a one-process sweep sees them.
        return {"num_replicas": 1, "rank": 0}


def member_share(count: int, rank: int, world_size: int) -> range:
    """The members process ``rank`` of ``world_size`` trains: a contiguous block.

    The first ``count % world_size`` processes take one member more.

    Example:
        >>> [list(member_share(5, rank, 2)) for rank in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_to_rank_zero(items: list[Any], world_size: int) -> list[Any]:
    """Every process's ``items`` concatenated in rank order on rank zero; ``[]`` on the others.

    A collective: every process of the sweep must call it.
    """
    if world_size == 1:
        return items
    gathered: list[Any] = [None] * world_size if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(items, gathered, dst=0)
    if gathered is None:
        return []
    return [item for part in gathered for item in part]
