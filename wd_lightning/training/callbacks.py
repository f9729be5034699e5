"""Callbacks that report on weight decay while a model trains."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer

from wd_lightning.core.errors import InvalidArgumentError, check_int_at_least
from wd_lightning.core.norms import (
    segment_norms,
    snapshot,
    squared_distances,
    squared_norms,
)
from wd_lightning.core.sharding import is_sharded, whole
from wd_lightning.core.timescale import GroupDecay, InitialWeightFactor, group_decay
from wd_lightning.training.cadence import logged_step, logs_this_step
from wd_lightning.training.hparams import global_seed, log_final_hparams

__all__ = ["WeightNormMonitor"]

ROOT_MODULE = "root"
"""The module name ``weight_norm/module/...`` uses for parameters of the top-level module."""

INIT_REMAINING = "weight_decay/init_remaining/"
"""Tag prefix of ∏(1 − lr·λ), the factor by which decay has multiplied a group's initial weights."""


class WeightNormMonitor(Callback):
    """Logs the L2 norm of each optimizer parameter group, ``weight_norm/<group>``, to every logger.

    Works with any LightningModule and optimizer. A group is named by its
    ``"name"`` key (as :func:`wd_lightning.param_groups` sets: ``decay``,
    ``no_decay``, ``<override>/decay`` …), else ``pgN`` for the N-th group;
    ``weight_norm/total`` is the norm of all the optimizer's parameters. With
    several optimizers the tags of optimizer i ≥ 1 read
    ``weight_norm/optimizer<i>/<group>``.

    **When.** On the steps where Lightning writes ``self.log(..., on_step=True)``
    metrics such as ``train/loss`` (every ``trainer.log_every_n_steps``
    optimizer steps, or every ``logging_interval`` steps), once per optimizer
    step even under gradient accumulation, and once more when training ends.
    The value at step *s* is the norm of the weights after *s* optimizer steps,
    taken just **before** step *s + 1* is applied: the weights the loss logged
    at step *s* was computed with, so the curves line up. The final point is
    the trained model, at the last step of Lightning's logging axis (which is
    ``trainer.global_step`` under automatic optimization; under manual
    optimization Lightning counts batches there, and ``global_step`` counts
    every optimizer's steps).

    **Cost.** Between logging steps, nothing. On a logging step, one fused
    multi-tensor kernel per device and dtype, float32 accumulation (bf16
    parameters lose nothing), and one host synchronisation for all values.
    Parameters sharded as ``DTensor`` (FSDP2, tensor parallelism) are measured
    whole, with one all-reduce per device mesh; every rank then takes part, and
    only global rank zero writes. Under DDP only rank zero measures.

    Args:
        logging_interval: log every this many optimizer steps; ``None`` follows
            the trainer's ``log_every_n_steps``.
        log_modules: also log ``weight_norm/module/<module>``, the norm of the
            parameters each module owns directly (``root`` for the top level).
        log_params: also log ``weight_norm/param/<parameter name>``.
        log_histograms: also write a histogram of each parameter's values,
            ``weight_hist/<parameter name>``, to TensorBoard loggers. This copies
            every parameter to the host (and gathers sharded ones whole) on
            each logging step: meant for small models or long intervals.
        log_update_ratio: also log ``update_ratio/<group>`` and
            ``update_ratio/total``, ‖Δw‖/‖w‖ of the optimizer step applied
            right after the logged weights, at the same step *s*. On logging
            steps only, this keeps a copy of the parameters (of each rank's
            shard) until the step is applied, and frees it immediately after.
        custom_scalars: write a TensorBoard custom-scalars layout that overlays
            ``train_loss`` with ``val_loss``, and the group norms, on one chart
            each.
        log_hparams: when training ends, fill TensorBoard's HPARAMS tab with the
            run's hyper-parameters (:func:`~wd_lightning.training.hparams.run_hparams`:
            the module's and datamodule's, the optimizer, its learning rate and
            the seed) against the last points of ``train/loss``, ``val/*`` and
            ``weight_norm/total``. Give the ``TensorBoardLogger``
            ``default_hp_metric=False``, or the tab also shows Lightning's
            placeholder ``hp_metric``.
        log_init_remaining: also log ``weight_decay/init_remaining/<group>``
            for every decayed group: ∏ₜ(1 − lrₜ·λ) over the optimizer steps
            taken so far, following the learning-rate schedule step by step,
            the factor by which weight decay has multiplied the group's
            initial weights (see :mod:`wd_lightning.core.timescale`). It is
            accumulated from the groups' Python-float learning rates at every
            step (no device work, no host synchronisation) and logged with the
            norms. Groups where an adaptive optimizer applies λ through the
            gradient (Adam, RMSprop, ... with coupled ``weight_decay``) have
            no closed form and are not logged; a message says so once. Saved
            in checkpoints, so a resumed fit continues the product.
        train_loss: tag of the training loss, for the custom-scalars chart.
        val_loss: tag of the validation loss, for the chart.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning.pytorch import Trainer
        >>> monitor = WeightNormMonitor(log_update_ratio=True)
        >>> trainer = Trainer(callbacks=[monitor], logger=False)
        >>> model = nn.Linear(3, 1)
        >>> optimizer = torch.optim.SGD([{"params": [model.weight], "name": "decay"}], lr=0.1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[3.0, 4.0, 0.0]]))
        >>> WeightNormMonitor.norms(optimizer)
        {'weight_norm/decay': tensor(5.), 'weight_norm/total': tensor(5.)}
    """

    def __init__(
        self,
        logging_interval: int | None = None,
        log_modules: bool = False,
        log_params: bool = False,
        log_histograms: bool = False,
        log_update_ratio: bool = False,
        custom_scalars: bool = True,
        log_hparams: bool = True,
        log_init_remaining: bool = True,
        train_loss: str = "train/loss",
        val_loss: str = "val/loss",
    ) -> None:
        if logging_interval is not None:
            check_int_at_least("logging_interval", logging_interval, 1)
        self.logging_interval = logging_interval
        self.log_modules = _check_bool("log_modules", log_modules)
        self.log_params = _check_bool("log_params", log_params)
        self.log_histograms = _check_bool("log_histograms", log_histograms)
        self.log_update_ratio = _check_bool("log_update_ratio", log_update_ratio)
        self.custom_scalars = _check_bool("custom_scalars", custom_scalars)
        self.log_hparams = _check_bool("log_hparams", log_hparams)
        self.log_init_remaining = _check_bool("log_init_remaining", log_init_remaining)
        self.train_loss = _check_tag("train_loss", train_loss)
        self.val_loss = _check_tag("val_loss", val_loss)
        self._plans: dict[int, _Plan] = {}
        self._pending: list[_PendingUpdate] = []
        self._layouts_written: set[str] = set()
        # Per optimizer index: the tracked factor and the group it follows, by tag.
        self._factors: dict[int, dict[str, tuple[InitialWeightFactor, dict[str, Any]]]] = {}
        self._restored_factors: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _check_strategy(trainer)
        self._plans.clear()
        self._factors.clear()
        if self.custom_scalars and trainer.is_global_zero:
            self._write_layout(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A checkpoint's factors have been loaded by now (before on_fit_start); the
        # first optimizer step is still to come.
        if self.log_init_remaining and trainer.loggers:
            for index, optimizer in enumerate(trainer.optimizers):
                self._factors[index] = self._track(trainer, pl_module, optimizer, index)
        self._restored_factors = {}

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if not trainer.loggers:
            return
        index = _optimizer_index(trainer, optimizer)
        if logs_this_step(trainer, self.logging_interval):
            plan = self._plan(trainer, pl_module, optimizer)
            if trainer.is_global_zero or plan.sharded:
                step = logged_step(trainer)
                squares = squared_norms(plan.tensors)
                if self.log_update_ratio:
                    self._pending.append(
                        _PendingUpdate(plan, snapshot(plan.tensors), squares, step)
                    )
                self._write(trainer, plan, squares, step)
        # After the logged value (the weights before this step), take this step's
        # decay: the group's lr now is the one the step uses (schedulers step later).
        for factor, group in self._factors.get(index, {}).values():
            factor.step(group["lr"])

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The optimizer step of a logging step has been applied by now.
        pending, self._pending = self._pending, []
        for update in pending:
            self._write_update_ratio(trainer, update)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = []
        if not trainer.loggers or not trainer.optimizers:
            return
        for optimizer in trainer.optimizers:
            plan = self._plan(trainer, pl_module, optimizer)
            if trainer.is_global_zero or plan.sharded:
                self._write(trainer, plan, squared_norms(plan.tensors), logged_step(trainer))
        if self.log_hparams and trainer.is_global_zero:
            self._write_hparams(trainer, pl_module)

    # ------------------------------------------------------------ public maths
    @staticmethod
    def norms(optimizer: Optimizer) -> dict[str, Tensor]:
        """The group norms and total this callback logs for ``optimizer``, as device tensors.

        Sharded (``DTensor``) parameters are measured whole, so with them every
        rank of the mesh must call this.

        Example:
            >>> from torch import nn
            >>> layer = nn.Linear(2, 1)
            >>> optimizer = torch.optim.SGD([{"params": [layer.weight]}, {"params": []}], lr=0.1)
            >>> list(WeightNormMonitor.norms(optimizer))
            ['weight_norm/pg0', 'weight_norm/pg1', 'weight_norm/total']
        """
        plan = _Plan.build(optimizer, index=0, names={})
        squares = squared_norms(plan.tensors)
        values = torch.cat([plan.group_norms(squares), squares.sum().sqrt()[None]])
        return dict(zip([*plan.group_tags, plan.total_tag], values.unbind(), strict=True))

    # -------------------------------------------------------------- internals
    def state_dict(self) -> dict[str, Any]:
        """The tracked ``init_remaining`` factors by tag, so that a resumed fit continues them."""
        factors = {
            tag: factor.state_dict()
            for tracked in self._factors.values()
            for tag, (factor, _) in tracked.items()
        }
        return {"init_remaining": factors} if factors else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_factors = dict(state_dict.get("init_remaining", {}))

    def _track(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer, index: int
    ) -> dict[str, tuple[InitialWeightFactor, dict[str, Any]]]:
        """A factor for every decayed group of ``optimizer`` whose decay has a closed form."""
        tracked = {}
        for tag, decay, group in _decaying_groups(pl_module, optimizer, index):
            if not decay.has_closed_form:
                if trainer.is_global_zero:
                    rank_zero_info(f"WeightNormMonitor: no {tag}: {decay.describe()}")
                continue
            factor = InitialWeightFactor(decay)
            if tag in self._restored_factors:
                factor.load_state_dict(self._restored_factors[tag])
            tracked[tag] = (factor, group)
        return tracked

    def _plan(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> _Plan:
        index = _optimizer_index(trainer, optimizer)
        plan = self._plans.get(index)
        if plan is None or not plan.describes(optimizer):
            names = {id(p): name for name, p in pl_module.named_parameters()}
            plan = _Plan.build(optimizer, index, names)
            self._plans[index] = plan
        return plan

    def _write(self, trainer: Trainer, plan: _Plan, squares: Tensor, step: int) -> None:
        """Log the norms measured as ``squares``; collective parts run on every rank."""
        tags = [*plan.group_tags, plan.total_tag]
        values = [plan.group_norms(squares), squares.sum().sqrt()[None]]
        if self.log_modules:
            tags += plan.module_tags
            values.append(plan.module_norms(squares))
        if self.log_params:
            tags += plan.param_tags
            values.append(squares.sqrt())
        histograms = self._histograms(trainer, plan) if self.log_histograms else {}
        if not trainer.is_global_zero:
            return
        factors: dict[str, float] = {}
        for tag, (factor, _) in self._factors.get(plan.index, {}).items():
            if isinstance(factor.value, Tensor):  # a tensor lr: joins the one synchronisation
                tags.append(tag)
                values.append(factor.value.reshape(1).to(values[0]))
            else:
                factors[tag] = factor.value
        # One host synchronisation for every value.
        metrics = dict(zip(tags, torch.cat(values).tolist(), strict=True)) | factors
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                for tag, tensor in histograms.items():
                    logger.experiment.add_histogram(tag, tensor, global_step=step)

    def _histograms(self, trainer: Trainer, plan: _Plan) -> dict[str, Tensor]:
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            return {}
        result = {}
        for name, tensor in zip(plan.param_names, plan.tensors, strict=True):
            gathered = whole(tensor.detach())  # a collective for a DTensor: every rank gathers
            if trainer.is_global_zero:
                result[f"weight_hist/{plan.prefix}{name}"] = gathered.float().cpu()
        return result

    def _write_update_ratio(self, trainer: Trainer, update: _PendingUpdate) -> None:
        plan = update.plan
        moved = squared_distances(plan.tensors, update.snapshot)
        update.snapshot = []  # release the copy of the parameters at once
        ratios = torch.cat(
            [
                plan.group_norms(moved) / plan.group_norms(update.squares),
                (moved.sum() / update.squares.sum()).sqrt()[None],
            ]
        )
        if not trainer.is_global_zero:
            return
        tags = [*plan.update_tags, plan.update_total_tag]
        kept = [i for i, size in enumerate([*plan.group_sizes, 1]) if size]
        values = ratios.tolist()
        metrics = {tags[i]: values[i] for i in kept}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=update.step)

    def _write_layout(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tensorboards = [
            logger
            for logger in trainer.loggers
            if isinstance(logger, TensorBoardLogger) and logger.log_dir not in self._layouts_written
        ]
        if not tensorboards:
            return
        plans = [self._plan(trainer, pl_module, optimizer) for optimizer in trainer.optimizers]
        remaining = [
            tag
            for index, optimizer in enumerate(trainer.optimizers)
            for tag, decay, _ in _decaying_groups(pl_module, optimizer, index)
            if decay.has_closed_form
        ]
        layout = self._layout(plans, remaining if self.log_init_remaining else [])
        for logger in tensorboards:
            logger.experiment.add_custom_scalars(layout)
            self._layouts_written.add(logger.log_dir)

    def _layout(
        self, plans: Sequence[_Plan], init_remaining: Sequence[str] = ()
    ) -> dict[str, dict[str, list[Any]]]:
        """The custom-scalars layout: one chart per list of tags (regular expressions)."""
        charts: dict[str, list[Any]] = {
            "loss: train vs validation": ["Multiline", _exact([self.train_loss, self.val_loss])],
            "weight norm per group": [
                "Multiline",
                _exact(tag for plan in plans for tag in [*plan.group_tags, plan.total_tag]),
            ],
        }
        if self.log_update_ratio:
            charts["update / weight ratio per group"] = [
                "Multiline",
                _exact(tag for p in plans for tag in [*p.update_tags, p.update_total_tag]),
            ]
        if self.log_modules:
            charts["weight norm per module"] = ["Multiline", [r"^weight_norm/module/"]]
        if init_remaining:
            charts["initial weights remaining per group"] = ["Multiline", _exact(init_remaining)]
        return {"weight decay": charts}

    def _write_hparams(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_final_hparams(
            [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)],
            pl_module,
            getattr(trainer, "datamodule", None),
            optimizer=trainer.optimizers[0] if trainer.optimizers else None,
            seed=global_seed(),
            metric_tags=[*trainer.callback_metrics, "weight_norm/total"],
            step=logged_step(trainer),
        )


@dataclass
class _Plan:
    """What to measure for one optimizer, and how the tags map onto its tensors (built once)."""

    tensors: list[Tensor]
    param_names: list[str]
    group_sizes: list[int]
    group_tags: list[str]
    total_tag: str
    update_tags: list[str]
    update_total_tag: str
    param_tags: list[str]
    module_tags: list[str]
    prefix: str
    index: int
    sharded: bool
    group_ids: Tensor
    module_ids: Tensor
    _signature: tuple[int, ...] = field(default=())

    @classmethod
    def build(cls, optimizer: Optimizer, index: int, names: dict[int, str]) -> _Plan:
        prefix = f"optimizer{index}/" if index else ""
        tensors: list[Tensor] = []
        param_names: list[str] = []
        group_tags, update_tags, group_sizes, group_ids = [], [], [], []
        for number, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"pg{number}"))
            group_tags.append(f"weight_norm/{prefix}{name}")
            update_tags.append(f"update_ratio/{prefix}{name}")
            params = list(group["params"])
            group_sizes.append(len(params))
            given = group.get("param_names")
            for position, param in enumerate(params):
                tensors.append(param)
                group_ids.append(number)
                if given is not None and len(given) == len(params):
                    param_names.append(str(given[position]))
                else:
                    param_names.append(names.get(id(param), f"{name}.{position}"))
        modules = [name.rpartition(".")[0] or ROOT_MODULE for name in param_names]
        module_order = list(dict.fromkeys(modules))
        device = tensors[0].device if tensors else torch.device("cpu")
        return cls(
            tensors=tensors,
            param_names=param_names,
            group_sizes=group_sizes,
            group_tags=group_tags,
            total_tag=f"weight_norm/{prefix}total",
            update_tags=update_tags,
            update_total_tag=f"update_ratio/{prefix}total",
            param_tags=[f"weight_norm/{prefix}param/{name}" for name in param_names],
            module_tags=[f"weight_norm/{prefix}module/{name}" for name in module_order],
            prefix=prefix,
            index=index,
            sharded=any(is_sharded(t) for t in tensors),
            group_ids=torch.tensor(group_ids, dtype=torch.long, device=device),
            module_ids=torch.tensor(
                [module_order.index(m) for m in modules], dtype=torch.long, device=device
            ),
            _signature=_signature(optimizer),
        )

    def describes(self, optimizer: Optimizer) -> bool:
        return self._signature == _signature(optimizer)

    def group_norms(self, squares: Tensor) -> Tensor:
        return segment_norms(squares, self.group_ids, len(self.group_tags))

    def module_norms(self, squares: Tensor) -> Tensor:
        return segment_norms(squares, self.module_ids, len(self.module_tags))


@dataclass
class _PendingUpdate:
    """A logging step's weights, kept until its optimizer step has been applied."""

    plan: _Plan
    snapshot: list[Tensor]
    squares: Tensor
    step: int


def _optimizer_index(trainer: Trainer, optimizer: Optimizer) -> int:
    return next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)


def _decaying_groups(
    pl_module: LightningModule, optimizer: Optimizer, index: int
) -> Iterable[tuple[str, GroupDecay, dict[str, Any]]]:
    """``(init_remaining tag, decay rule, group)`` for each group of ``optimizer`` that decays."""
    prefix = f"optimizer{index}/" if index else ""
    intended = _intended_weight_decays(pl_module, optimizer)
    for number, group in enumerate(optimizer.param_groups):
        decay = group_decay(optimizer, group, weight_decay=intended[number])
        if decay.kind != "none" and group["params"]:
            name = str(group.get("name", f"pg{number}"))
            yield f"{INIT_REMAINING}{prefix}{name}", decay, group


def _intended_weight_decays(pl_module: LightningModule, optimizer: Optimizer) -> list[float | None]:
    """Each group's λ where the optimizer does not apply it itself, else ``None``.

    A :class:`~wd_lightning.WeightDecayModule` with ``penalty="loss"`` hands the
    optimizer groups with ``weight_decay=0`` and adds λ/2·‖w‖² to the loss; its
    report still knows each group's λ.
    """
    report = getattr(pl_module, "param_groups_report", None)
    names = [group.get("name") for group in optimizer.param_groups]
    if getattr(pl_module, "penalty", None) != "loss" or report is None:
        return [None] * len(names)
    if [group["name"] for group in report.groups] != names:
        return [None] * len(names)
    return [float(group["weight_decay"]) for group in report.groups]


def _signature(optimizer: Optimizer) -> tuple[int, ...]:
    return tuple(id(p) for group in optimizer.param_groups for p in group["params"])


def _exact(tags: Iterable[str]) -> list[str]:
    # TensorBoard matches these regular expressions at the start of a tag only.
    return [f"^{re.escape(tag)}$" for tag in tags]


def _check_bool(argument: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(argument, value, "True or False")
    return value


def _check_tag(argument: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(argument, value, "a non-empty tag name")
    return value


def _check_strategy(trainer: Trainer) -> None:
    """Refuse strategies whose parameters are flat per-rank shards: their norms would be wrong."""
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy) or (
        isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3
    ):
        raise TypeError(
            f"WeightNormMonitor cannot measure whole parameters under {type(strategy).__name__}: "
            "each rank holds a flattened shard. Use ModelParallelStrategy with FSDP2 "
            "(fully_shard), whose DTensor parameters it measures whole."
        )
