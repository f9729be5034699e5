"""Every member's validation metrics from one template, computed for all members at once.

A sweep evaluates the template's torchmetrics for each of its members. One
metric object per member is exact, but costs a round trip through
torchmetrics' Python machinery per member and validation: 1,000 members
validated 100 times are 100,000 updates, more than the training itself.

So a metric whose state is a set of tensors, and whose ``update`` and
``compute`` are plain tensor maths (``MeanSquaredError``,
``MeanAbsoluteError``, ...), is run once for all members with
``torch.func.vmap``: each state tensor gets a leading member dimension, and
the metric's own ``update`` and ``compute`` run on it unchanged. A metric
that vmap cannot run (a check that reads its inputs' values, as
classification metrics do; a list state) falls back, from the update where
that shows, to one copy per member, carrying over what it had accumulated.
Either way each member's value is the one its own metric object would give.

Metrics are never synchronised across processes here: in a sweep split over
processes, each process holds other members, so there is nothing to reduce.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from wd_lightning.training.compat import MetricInternals

__all__ = ["MemberMetrics"]

# What vmap raises for an operation it cannot batch (a value read, a dynamic shape).
_CANNOT_VMAP = (RuntimeError, NotImplementedError)
_NO_BATCHING_RULE = "There is a performance drop because we have not yet implemented"


class MemberMetrics(nn.Module):
    """The metrics of a ``MetricCollection`` template, for each of ``members`` members.

    Registered as a submodule, its stacked states follow the ensemble's device.

    Args:
        template: the collection a single fit would update (keys such as ``val/mse``).
        members: how many members share it.

    Example:
        >>> import torch
        >>> from torchmetrics import MeanSquaredError, MetricCollection
        >>> metrics = MemberMetrics(MetricCollection({"mse": MeanSquaredError()}, prefix="val/"), 2)
        >>> predictions = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # (members, batch)
        >>> metrics.update(predictions, torch.tensor([1.0, 4.0]))
        >>> metrics.compute()
        {'val/mse': tensor([2.0000, 8.5000])}
        >>> metrics.stacked_names()
        ['val/mse']
    """

    def __init__(self, template: MetricCollection, members: int) -> None:
        super().__init__()
        self.members = members
        self.metrics = nn.ModuleDict(
            {
                _key(name): _StackedMetric(metric, name, members)
                for name, metric in template.items(keep_base=False, copy_state=False)
            }
        )

    def __bool__(self) -> bool:
        return len(self.metrics) > 0

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        """Add one batch: ``predictions`` has the member dimension first; ``targets`` is shared."""
        for metric in self.metrics.values():
            metric.update(predictions, targets)

    def compute(self) -> dict[str, Tensor]:
        """``{name: one value per member}`` for every metric with a scalar value per member."""
        values: dict[str, Tensor] = {}
        for metric in self.metrics.values():
            values.update(metric.compute())
        return values

    def reset(self) -> None:
        """Back to no batches seen, for every member."""
        for metric in self.metrics.values():
            metric.reset()

    def stacked_names(self) -> list[str]:
        """The metrics currently computed for all members at once (the others: one by one)."""
        return [m.name for m in self.metrics.values() if m.member_copies is None]


class _StackedMetric(nn.Module):
    """One metric of the template: stacked states under vmap, or one copy per member."""

    def __init__(self, template: Metric, name: str, members: int) -> None:
        super().__init__()
        self.name = name
        self.members = members
        # The metric whose update and compute run on the stacked states; its
        # own states are replaced on every call, so it is not a submodule.
        scratch = copy.deepcopy(template)
        scratch.reset()
        object.__setattr__(self, "_scratch", scratch)
        defaults = MetricInternals.state_defaults(template)
        self.state_names = list(defaults)
        # None while the states are stacked; else one metric per member, in a plain
        # list rather than as submodules: Lightning's train()/eval() would walk every
        # copy at every validation.
        self.member_copies: list[Metric] | None = None
        self.updates = 0  # since the last reset
        if not all(isinstance(default, Tensor) for default in defaults.values()):
            self._to_member_copies(stacked=(), accumulated=0)  # list states have no shape to stack
        else:
            for index, name in enumerate(self.state_names):
                # Not persistent, as torchmetrics' own states: checkpoints leave them out.
                self.register_buffer(
                    f"state_{index}", self._stacked_default(name), persistent=False
                )

    # ------------------------------------------------------------- states
    def _stacked_default(self, name: str, device: torch.device | None = None) -> Tensor:
        default = MetricInternals.state_defaults(self._scratch)[name].to(device)
        return default.unsqueeze(0).expand(self.members, *default.shape).clone()

    def _states(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f"state_{i}") for i in range(len(self.state_names)))

    def _set_states(self, states: tuple[Tensor, ...]) -> None:
        for index, state in enumerate(states):
            setattr(self, f"state_{index}", state)

    def _load_scratch(self, states: tuple[Tensor, ...]) -> None:
        for name, state in zip(self.state_names, states, strict=True):
            setattr(self._scratch, name, state)

    # ------------------------------------------------------------ updates
    def update(self, predictions: Tensor, targets: Tensor) -> None:
        if self.member_copies is None:
            try:
                self._set_states(self._vmapped_update(predictions, targets))
                self.updates += 1
                return
            except _CANNOT_VMAP:
                # vmap cannot run this update (it reads its inputs' values, or
                # changes shape with them): from here on, one copy per member.
                self._to_member_copies(self._states(), accumulated=self.updates)
        for metric, prediction in zip(self.member_copies, predictions, strict=True):
            metric.update(prediction, targets)
        self.updates += 1

    def _vmapped_update(self, predictions: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        scratch = self._scratch
        scratch.to(predictions.device)
        raw_update = MetricInternals.raw_update(scratch)

        def update_one(states: tuple[Tensor, ...], prediction: Tensor) -> tuple[Tensor, ...]:
            self._load_scratch(states)
            raw_update(scratch, prediction, targets)
            return tuple(getattr(scratch, name) for name in self.state_names)

        # Clones: an update that fails half way must leave the states as they were.
        states = tuple(state.clone() for state in self._states())
        try:
            with warnings.catch_warnings():
                # vmap runs an operation it has no batching rule for one member at a
                # time, and says so; still one call for all members, and exact.
                warnings.filterwarnings("ignore", message=_NO_BATCHING_RULE)
                return torch.func.vmap(update_one, in_dims=(0, 0))(states, predictions)
        finally:
            scratch.reset()  # drop vmap's wrapped tensors, which outlive the call

    def compute(self) -> dict[str, Tensor]:
        if self.member_copies is None:
            try:
                return self._scalars([self._vmapped_compute()])
            except _CANNOT_VMAP:
                self._to_member_copies(self._states(), accumulated=self.updates)
        return self._scalars([metric.compute() for metric in self.member_copies], per_member=True)

    def _vmapped_compute(self) -> Tensor | dict[str, Tensor]:
        scratch = self._scratch
        raw_compute = MetricInternals.raw_compute(scratch)

        def compute_one(states: tuple[Tensor, ...]) -> Tensor | dict[str, Tensor]:
            self._load_scratch(states)
            return raw_compute(scratch)

        try:
            return torch.func.vmap(compute_one)(self._states())
        finally:
            scratch.reset()

    def _scalars(self, results: list, per_member: bool = False) -> dict[str, Tensor]:
        """``{name: (members,)}`` from vmapped results or one result per member.

        A metric may return a tensor or a dict of them; only values that hold
        one number per member are kept, as a fit logs only scalars.
        """
        keyed = [r if isinstance(r, dict) else {self.name: r} for r in results]
        values = {}
        for key in keyed[0]:
            parts = [k[key] for k in keyed]
            if not all(isinstance(p, Tensor) for p in parts):
                continue
            if per_member:
                if all(p.numel() == 1 for p in parts):
                    values[key] = torch.stack([p.reshape(()).float() for p in parts])
            elif parts[0].numel() == self.members:
                values[key] = parts[0].reshape(self.members).float()
        return values

    def reset(self) -> None:
        self.updates = 0
        if self.member_copies is None:
            states = self._states()
            device = states[0].device if states else None
            self._set_states(tuple(self._stacked_default(n, device) for n in self.state_names))
            return
        for metric in self.member_copies:
            metric.reset()

    def _to_member_copies(self, stacked: tuple[Tensor, ...], accumulated: int) -> None:
        """One copy of the metric per member, holding what the ``stacked`` states hold.

        ``accumulated``: the updates the stacked states hold, which each copy
        counts as its own.
        """
        device = stacked[0].device if stacked else None
        copies = []
        for member in range(self.members):
            metric = copy.deepcopy(self._scratch)
            metric.reset()
            # Each process holds its own members: there is nothing to reduce across them.
            MetricInternals.never_synchronise(metric)
            if device is not None:
                metric.to(device)
            if stacked:  # else the copies start fresh
                for name, state in zip(self.state_names, stacked, strict=True):
                    setattr(metric, name, state[member].clone())
            MetricInternals.set_update_count(metric, accumulated)
            copies.append(metric)
        self.member_copies = copies


def _key(name: str) -> str:
    # ModuleDict keys may not contain dots; the metric's own name is kept in it.
    return name.replace(".", "_").replace("/", "__")
