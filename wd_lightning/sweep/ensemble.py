"""Train many copies of one model at once, each with its own λ: a vectorised ensemble.

The members of a λ × seed sweep share the data, the batches and the
architecture; they differ in their initial weights and in λ. So instead of
``M`` fits, the ensemble keeps every parameter as one tensor with a leading
member dimension, runs the model over all members with ``torch.func.vmap``,
and steps one optimizer over the stacked tensors. That is exact for
element-wise optimizers (SGD, Adam and their relatives): each element of a
stacked tensor follows the same update it would in a fit of its own. λ is the
only per-member setting, applied where a fit applies it:

* ``penalty="loss"``: λ/2·‖w‖² is added to each member's loss, so gradient
  clipping sees it, as in the fit;
* coupled ``weight_decay`` (SGD, Adam, ...): ``grad += λ·w`` after gradient
  clipping, right before the optimizer step, as torch adds it inside the step;
* decoupled (AdamW, ``decoupled_weight_decay=True``): ``w *= 1 − lr·λ``, at
  the same point.

Decay is thus applied once per optimizer step, after gradient accumulation.
Trainer options under which a member could not equal its fit are refused
when the fit starts (see :meth:`on_fit_start`).

Members never mix: the summed loss gives each its own gradient, and a member
whose loss turns non-finite is recorded as diverged and dropped from the sum
while the others train on.

Like :class:`~wd_lightning.WeightNormMonitor` in a fit, the ensemble tracks
for each member the factor ∏(1 − lr·λ) by which decay has multiplied its
initial weights (``weight_decay/init_remaining/<group>``), where that has a
closed form (SGD, or decoupled decay), and evaluates the template's
``val_metrics`` for every member (``val/<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    DeviceStatsMonitor,
    LearningRateMonitor,
    StochasticWeightAveraging,
)
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.core.losses import HalfMSELoss, half_mse_per_member
from wd_lightning.core.norms import segment_norms, stacked_squared_norms
from wd_lightning.core.timescale import GroupDecay, InitialWeightFactor, group_decay
from wd_lightning.sweep.member_metrics import MemberMetrics
from wd_lightning.training.cadence import logged_step, logs_this_step
from wd_lightning.training.module import WeightDecayModule

__all__ = [
    "ELEMENTWISE_OPTIMIZERS",
    "EnsembleRecord",
    "WeightDecayEnsemble",
    "check_sweep_trainer",
    "is_decoupled",
]

#: Optimizers whose update of each element depends on that element alone (plus
#: the step count), so that stacking members into one tensor changes nothing.
#: Optimizers with per-tensor statistics (LBFGS, Adafactor, Muon, ...) are not.
ELEMENTWISE_OPTIMIZERS = (
    "SGD",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
)


@dataclass
class EnsembleRecord:
    """What the members did, as ``(epoch, step, values)`` points with one value per member.

    ``train_loss`` is each epoch's mean training loss over its batches (before
    each step, as logged); ``val_loss`` the held-out loss at each validation;
    ``val_metrics`` the template's validation metrics at each validation, by
    tag (``val/accuracy``); ``last_train_loss`` the last ``train/loss``
    written to the logs.
    """

    train_loss: list[tuple[int, int, Tensor]] = field(default_factory=list)
    val_loss: list[tuple[int, int, Tensor]] = field(default_factory=list)
    val_metrics: list[tuple[int, int, dict[str, Tensor]]] = field(default_factory=list)
    last_train_loss: Tensor | None = None


class WeightDecayEnsemble(LightningModule):
    """``M`` copies of a :class:`~wd_lightning.WeightDecayModule`, trained as one.

    ``members[i]`` must be built from the same configuration as the others, so
    that their models have the same parameter names and shapes; they may
    differ in initial values and in λ (``weight_decay``). Each member's
    parameter groups, learning rates and λ are taken from its own
    ``param_groups_report``.

    Logged per member, through ``writers[i]`` (an object with
    ``add_scalars(values, step)``, e.g. :class:`~wd_lightning.training.tensorboard.RunWriter`),
    or for all members at once through a writer with ``add_table(tags, values,
    step, runs)`` (:class:`~wd_lightning.training.scalar_runs.ScalarRuns`), with
    the tags and steps a fit of that member writes: ``train/loss``,
    ``val/loss``, ``val/<metric>``, ``weight_norm/<group>`` /
    ``weight_norm/total`` and ``weight_decay/init_remaining/<group>``.

    Args:
        members: the modules to train together (at least one).
        writers: one writer per member, a ``ScalarRuns`` with one run per
            member, or ``None`` to log nothing.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from wd_lightning import WeightDecayModule
        >>> members = [WeightDecayModule(nn.Linear(3, 1), weight_decay=wd) for wd in (0.0, 1.0)]
        >>> ensemble = WeightDecayEnsemble(members)
        >>> ensemble(torch.zeros(4, 3)).shape  # (members, batch, outputs)
        torch.Size([2, 4, 1])
        >>> ensemble.decay_factors["weight"].tolist(), ensemble.decay_factors["bias"].tolist()
        ([0.0, 1.0], [0.0, 0.0])
    """

    def __init__(self, members: Sequence[WeightDecayModule], writers: Sequence[Any] | None = None):
        super().__init__()
        if not members:
            raise InvalidArgumentError("members", [], "at least one WeightDecayModule")
        if writers is not None and len(writers) != len(members):
            raise InvalidArgumentError("writers", len(writers), f"{len(members)}, one per member")
        template = members[0]
        self.num_members = len(members)
        # A table writer encodes every member's values at once; others get them one by one.
        table_writer = writers is None or hasattr(writers, "add_table")
        self.writers = writers if table_writer else list(writers)
        # The template's modules run the maths; they are kept out of this module's
        # state so that only the stacked tensors are parameters.
        object.__setattr__(self, "_skeleton", template.model)
        object.__setattr__(self, "_loss", template.loss)
        object.__setattr__(self, "_template", template)

        self.param_names = [name for name, _ in template.model.named_parameters()]
        self.buffer_names = [name for name, _ in template.model.named_buffers()]
        self.stacked = nn.ParameterList(
            [
                nn.Parameter(
                    _stack(members, name, "parameter"),
                    requires_grad=template.model.get_parameter(name).requires_grad,
                )
                for name in self.param_names
            ]
        )
        for index, name in enumerate(self.buffer_names):
            self.register_buffer(f"stacked_buffer_{index}", _stack(members, name, "buffer"))

        factory = template.lr_scheduler_factory
        # A config's scheduler is a partial of its class: refused before anything is written.
        _check_scheduler(
            factory.args[-1] if isinstance(factory, partial) and factory.args else factory
        )
        self.groups = self._group_names(template)
        self.decay_factors = {
            name: torch.tensor([_decay_of(member, name) for member in members], dtype=torch.float64)
            for name in self._trainable_names()
        }
        # Each member's metric state, stacked; registered, so it follows the device.
        self.member_metrics = MemberMetrics(template.val_metrics, self.num_members)
        # Per decayed group with a closed form (configure_optimizers): the distinct
        # factors, one per rule, and each member's index into them.
        self._distinct_factors: dict[str, tuple[list[InitialWeightFactor], Tensor]] = {}
        self.register_buffer("alive", torch.ones(self.num_members, dtype=torch.bool))
        self.register_buffer("diverged_at", torch.full((self.num_members,), -1))
        self.record = EnsembleRecord()
        self._epoch_loss_sum: Tensor | None = None
        self._epoch_batches = 0
        self._val_sum: Tensor | None = None
        self._val_count = 0
        self._coupled = True
        self._decay_plan: dict[int, Tensor] | None = None

    # ------------------------------------------------------------ structure
    @property
    def template(self) -> WeightDecayModule:
        """The first member: its model, loss and optimizer factory serve every member."""
        return self._template

    def _trainable_names(self) -> list[str]:
        return [n for n, p in zip(self.param_names, self.stacked, strict=True) if p.requires_grad]

    def _group_names(self, template: WeightDecayModule) -> dict[str, list[str]]:
        report = template.param_groups_report
        groups: dict[str, list[str]] = {group["name"]: [] for group in report.groups}
        for decision in report.decisions:
            groups[decision.group].append(decision.name)
        return groups

    def stacked_parameters(self) -> dict[str, Tensor]:
        """Every parameter of the model by name, with the member dimension first."""
        return dict(zip(self.param_names, self.stacked, strict=True))

    def stacked_buffers(self) -> dict[str, Tensor]:
        """Every buffer of the model by name, with the member dimension first."""
        return {
            name: getattr(self, f"stacked_buffer_{index}")
            for index, name in enumerate(self.buffer_names)
        }

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s parameters and buffers, as its model's ``state_dict`` would hold."""
        state = {name: p[index].detach() for name, p in self.stacked_parameters().items()}
        state.update({name: b[index] for name, b in self.stacked_buffers().items()})
        return state

    # -------------------------------------------------------------- forward
    def forward(self, inputs: Tensor) -> Tensor:
        """The predictions of every member for one batch: ``(members, *model output)``."""
        params = self.stacked_parameters()
        if type(self._skeleton) is nn.Linear:
            outputs = _stacked_linear(inputs, params["weight"])
            bias = params.get("bias")
            return (
                outputs
                if bias is None
                else outputs + bias.view(-1, *[1] * (outputs.ndim - 2), bias.shape[-1])
            )

        # The skeleton is not a registered submodule, so Lightning's train() / eval()
        # does not reach it: without this, BatchNorm and dropout would stay in
        # training mode during validation.
        if self._skeleton.training != self.training:
            self._skeleton.train(self.training)

        def member_forward(params: dict, buffers: dict, batch: Tensor) -> Tensor:
            return torch.func.functional_call(self._skeleton, (params, buffers), (batch,))

        return torch.func.vmap(member_forward, in_dims=(0, 0, None), randomness="different")(
            params, self.stacked_buffers(), inputs
        )

    def member_penalties(self) -> Tensor:
        """λ/2·‖w‖² of every member's decayed weights, shape ``(members,)``.

        What ``penalty="loss"`` adds to each member's loss (zeros otherwise).
        """
        total = torch.zeros(self.num_members, device=self.alive.device)
        if self._template.penalty != "loss":
            return total
        params = self.stacked_parameters()
        for name, factors in self.decay_factors.items():
            if factors.any():
                param = params[name]
                squares = param.square().flatten(1).sum(1)
                total = total + 0.5 * factors.to(param.device, squares.dtype) * squares
        return total

    def member_losses(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of every member on one batch, shape ``(members,)``."""
        return self._losses(self(inputs), targets)

    def _losses(self, predictions: Tensor, targets: Tensor) -> Tensor:
        if type(self._loss) is HalfMSELoss:
            # The same loss for all members in one expression.
            return half_mse_per_member(predictions, targets)
        return torch.func.vmap(self._loss, in_dims=(0, None))(predictions, targets)

    # ------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> Any:
        template = self._template
        report_groups = {group["name"]: group for group in template.param_groups_report.groups}
        params = self.stacked_parameters()
        groups = [
            {
                **{k: v for k, v in report_groups[name].items() if k != "params"},
                "params": [params[p] for p in names],
                # λ differs between members: applied per member in on_before_optimizer_step.
                "weight_decay": 0.0,
            }
            for name, names in self.groups.items()
        ]
        optimizer = template.optimizer_factory(groups)
        kind = type(optimizer).__name__
        if kind not in ELEMENTWISE_OPTIMIZERS:
            raise InvalidArgumentError(
                "optimizer", kind, "an element-wise optimizer: " + ", ".join(ELEMENTWISE_OPTIMIZERS)
            )
        # Coupled: λ·w joins the gradient (the optimizer's coupled decay, or the loss's penalty).
        self._coupled = template.penalty == "loss" or not is_decoupled(optimizer)
        self._distinct_factors = self._initial_weight_factors(optimizer)
        if template.lr_scheduler_factory is None:
            return optimizer
        scheduler = template.lr_scheduler_factory(optimizer)
        _check_scheduler(type(scheduler))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_fit_start(self) -> None:
        """Refuse trainer options under which a member would not equal its own fit.

        * gradient clipping by norm: a norm over a stacked tensor mixes members;
        * a gradient scaler (``precision="16-mixed"``): one member's overflow
          would skip every member's step;
        * callbacks that follow one metric (``ModelCheckpoint(monitor=...)``,
          ``EarlyStopping``): each member has its own;
        * ``StochasticWeightAveraging``: its averaged copy of the module holds
          no per-member decay.
        """
        check_sweep_trainer(self.trainer)
        self._decay_plan = None  # rebuilt on the device the fit runs on

    def _make_decay_plan(self) -> dict[int, Tensor]:
        # Per-member λ shaped to broadcast over each stacked parameter, kept in
        # float64 so that 1 − lr·λ rounds as torch's own (double) arithmetic does.
        params = self.stacked_parameters()
        return {
            id(params[name]): factors.to(params[name].device).view(
                -1, *([1] * (params[name].ndim - 1))
            )
            for name, factors in self.decay_factors.items()
            if factors.any()
        }

    def _initial_weight_factors(
        self, optimizer: Optimizer
    ) -> dict[str, tuple[list[InitialWeightFactor], Tensor]]:
        """Per decayed group whose decay has a closed form: its factors and each member's index.

        Members with the same rule (the same λ) share one factor, which then
        steps once for all of them: a sweep has far fewer λ than members.
        """
        distinct = {}
        for group in optimizer.param_groups:
            names = self.groups.get(group["name"], [])
            decays = [self.decay_factors[n] for n in names if n in self.decay_factors]
            if not decays or not decays[0].any():
                continue
            rules = []
            for weight_decay in decays[0].tolist():
                if not self._coupled:
                    rules.append(
                        GroupDecay("decoupled", weight_decay, optimizer=type(optimizer).__name__)
                    )
                else:  # λ·w joins the gradient here, as a loss penalty would
                    rules.append(group_decay(optimizer, group, weight_decay=weight_decay))
            if all(rule.has_closed_form or rule.kind == "none" for rule in rules):
                shared: dict[GroupDecay, int] = {}
                index = [shared.setdefault(rule, len(shared)) for rule in rules]
                unique = [InitialWeightFactor(rule) for rule in shared]
                distinct[group["name"]] = (unique, torch.tensor(index))
        return distinct

    @property
    def init_remaining(self) -> dict[str, list[InitialWeightFactor]]:
        """Per decayed group with a closed form, each member's initial-weight factor.

        Members with the same rule hold the same factor object.
        """
        return {
            name: [factors[i] for i in index.tolist()]
            for name, (factors, index) in self._distinct_factors.items()
        }

    def _init_remaining_values(self) -> dict[str, Tensor]:
        device = self.alive.device
        values = {}
        for name, (factors, index) in self._distinct_factors.items():
            distinct = torch.tensor([float(f.value) for f in factors], device=device)
            values[f"weight_decay/init_remaining/{name}"] = distinct[index.to(device)]
        return values

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Norms are of the weights the step starts from, as the weight-norm monitor logs them.
        if self.writers is not None and logs_this_step(self.trainer):
            values = {**self.weight_norms(), **self._init_remaining_values()}
            self._write(values, logged_step(self.trainer))
        for group in optimizer.param_groups:
            factors, _ = self._distinct_factors.get(group.get("name"), ([], None))
            for factor in factors:
                factor.step(group["lr"])

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as configured, then apply each member's decay.

        Lightning calls this once per optimizer step, after the gradients are
        accumulated and right before ``optimizer.step()``: where torch applies
        ``weight_decay`` in a fit, so clipping never sees λ·w.
        """
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.apply_decay(optimizer)

    @torch.no_grad()
    def apply_decay(self, optimizer: Optimizer) -> None:
        """Each member's ``weight_decay`` on the stacked tensors, as torch's step would apply it.

        Nothing under ``penalty="loss"``, where the loss carries λ.
        """
        if self._template.penalty == "loss":
            return
        if self._decay_plan is None:
            self._decay_plan = self._make_decay_plan()
        for group in optimizer.param_groups:
            for param in group["params"]:
                factors = self._decay_plan.get(id(param))
                if factors is None:
                    continue
                if self._coupled:  # what torch does first: grad ← grad + λ·w
                    if param.grad is not None:
                        param.grad.addcmul_(factors.to(param.dtype), param)
                else:  # decoupled: w ← (1 − lr·λ)·w, independent of the gradient step
                    param.mul_((1 - group["lr"] * factors).to(param.dtype))

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        losses = self.member_losses(inputs, targets)
        finite = torch.isfinite(losses)
        self.diverged_at = torch.where(
            self.alive & ~finite,
            torch.full_like(self.diverged_at, self.global_step),
            self.diverged_at,
        )
        self.alive = self.alive & finite
        detached = torch.where(self.alive, losses.detach(), torch.nan)
        if self._epoch_loss_sum is None:
            self._epoch_loss_sum = torch.zeros_like(detached)
        self._epoch_loss_sum = self._epoch_loss_sum + detached
        self._epoch_batches += 1
        if logs_this_step(self.trainer):
            self.record.last_train_loss = detached
            if self.writers is not None:
                self._write({"train/loss": detached}, logged_step(self.trainer))
        objectives = losses + self.member_penalties()
        # A diverged member leaves the sum, so its non-finite loss cannot reach the others.
        return torch.where(self.alive, objectives, torch.zeros_like(objectives)).sum()

    def on_train_epoch_end(self) -> None:
        if self._epoch_loss_sum is not None and self._epoch_batches:
            mean = self._epoch_loss_sum / self._epoch_batches
            self.record.train_loss.append((self.current_epoch, logged_step(self.trainer), mean))
        self._epoch_loss_sum, self._epoch_batches = None, 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        predictions = self(inputs)
        if self.member_metrics:
            self.member_metrics.update(predictions, targets)
        weighted = self._losses(predictions, targets).detach() * len(inputs)
        self._val_sum = weighted if self._val_sum is None else self._val_sum + weighted
        self._val_count += len(inputs)

    def on_validation_epoch_end(self) -> None:
        val_sum, count = self._val_sum, self._val_count
        self._val_sum, self._val_count = None, 0
        metrics = self._compute_member_metrics() if val_sum is not None else {}
        if self.trainer.sanity_checking or val_sum is None:
            return
        val_loss = torch.where(self.alive, val_sum / count, torch.nan)
        step = logged_step(self.trainer)
        self.record.val_loss.append((self.current_epoch, step, val_loss))
        if metrics:
            self.record.val_metrics.append((self.current_epoch, step, metrics))
        if self.writers is not None:
            self._write({"val/loss": val_loss, **metrics}, step)

    def _compute_member_metrics(self) -> dict[str, Tensor]:
        """Each member's validation metrics, ``{"val/<name>": (members,)}``, then reset them."""
        if not self.member_metrics:
            return {}
        computed = self.member_metrics.compute()
        self.member_metrics.reset()
        return {
            tag: torch.where(self.alive, values.to(self.alive.device), torch.nan)
            for tag, values in computed.items()
        }

    def on_train_end(self) -> None:
        if self.writers is not None:
            values = {**self.weight_norms(), **self._init_remaining_values()}
            self._write(values, logged_step(self.trainer))

    # -------------------------------------------------------------- figures
    @torch.no_grad()
    def weight_norms(self) -> dict[str, Tensor]:
        """``weight_norm/<group>`` and ``weight_norm/total`` for every member, as ``(members,)``."""
        params = self.stacked_parameters()
        names = self._trainable_names()
        if not names:
            zero = torch.zeros(self.num_members, device=self.alive.device)
            return {f"weight_norm/{group}": zero for group in [*self.groups, "total"]}
        squares = stacked_squared_norms([params[name] for name in names])
        group_of = {n: i for i, in_group in enumerate(self.groups.values()) for n in in_group}
        group_ids = torch.tensor([group_of[name] for name in names], device=squares.device)
        group_norms = segment_norms(squares, group_ids, len(self.groups))
        result = {f"weight_norm/{group}": group_norms[i] for i, group in enumerate(self.groups)}
        result["weight_norm/total"] = squares.sum(0).sqrt()
        return result

    def _write(self, values: dict[str, Tensor], step: int) -> None:
        # One host synchronisation for every member's values.
        tags = list(values)
        table = torch.stack([values[tag].float() for tag in tags], dim=1)
        if hasattr(self.writers, "add_table"):
            self.writers.add_table(tags, table, step, self.alive)
            return
        table = table.tolist()
        alive = self.alive.tolist()
        for writer, row, is_alive in zip(self.writers, table, alive, strict=True):
            if is_alive:
                writer.add_scalars(dict(zip(tags, row, strict=True)), step)


def is_decoupled(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` applies ``weight_decay`` as ``w *= 1 − lr·λ`` (AdamW's rule).

    ``AdamW`` carries ``decoupled_weight_decay`` in its defaults only since
    torch 2.7, where it became a subclass of ``Adam``; before, the class itself
    is the sign. Adam, NAdam and RAdam take the flag as an argument.

    Example:
        >>> import torch
        >>> params = [torch.zeros(1, requires_grad=True)]
        >>> is_decoupled(torch.optim.AdamW(params)), is_decoupled(torch.optim.Adam(params))
        (True, False)
    """
    return isinstance(optimizer, torch.optim.AdamW) or bool(
        optimizer.defaults.get("decoupled_weight_decay", False)
    )


def check_sweep_trainer(trainer: Trainer) -> None:
    """Refuse the trainer options a vectorised sweep cannot honour (see ``on_fit_start``)."""
    if trainer.gradient_clip_val and trainer.gradient_clip_algorithm != "value":
        raise InvalidArgumentError(
            "trainer.gradient_clip_algorithm",
            trainer.gradient_clip_algorithm,
            "'value' in a sweep (norm clipping would mix the members)",
        )
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise InvalidArgumentError(
            "trainer.precision",
            trainer.precision,
            "a precision without a gradient scaler in a sweep, e.g. 'bf16-mixed' or "
            "'32-true' (the scaler would skip every member's step when one overflows)",
        )
    for callback in trainer.callbacks:
        if getattr(callback, "monitor", None) is not None:
            raise InvalidArgumentError(
                "trainer.callbacks",
                type(callback).__name__,
                f"callbacks that follow no single metric in a sweep ({callback.monitor!r} "
                "differs between members; each member's run holds its own)",
            )
        if isinstance(callback, (LearningRateMonitor, DeviceStatsMonitor)):
            raise InvalidArgumentError(
                "trainer.callbacks",
                type(callback).__name__,
                "callbacks that need no Lightning logger in a sweep (it writes one run per "
                "member itself, and the trainer has no logger)",
            )
        if isinstance(callback, StochasticWeightAveraging):
            raise InvalidArgumentError(
                "trainer.callbacks",
                type(callback).__name__,
                "no weight averaging in a sweep (its averaged copy has no per-member decay)",
            )


def _check_scheduler(kind: Any) -> None:
    if isinstance(kind, type) and issubclass(kind, ReduceLROnPlateau):
        raise InvalidArgumentError(
            "lr_scheduler",
            kind.__name__,
            "a schedule that follows no metric in a sweep: one scheduler steps every "
            "member, and each member's metric is its own",
        )


# Fewer rows than this take other BLAS kernels than a large product does (matrix-
# vector ones, which sum in another order); padding to it keeps a member's row the
# same however few members share the product.
_MIN_PRODUCT_ROWS = 16


def _stacked_linear(inputs: Tensor, weight: Tensor) -> Tensor:
    """Every member's ``inputs @ weight[m].T``, as ``(members, *inputs.shape[:-1], out)``.

    One matrix product of all members' weight rows with the batch, rather
    than a batched product of one small product per member: at 10,000
    members it is about ten times faster, forward and backward. Each row of
    a matrix product is computed alike wherever it sits and however many rows
    there are (with at least ``_MIN_PRODUCT_ROWS``), so a member's outputs do
    not depend on which members share its process.
    """
    members, out_features, in_features = weight.shape
    rows = weight.reshape(members * out_features, in_features)
    if len(rows) < _MIN_PRODUCT_ROWS:
        rows = torch.cat([rows, rows.new_zeros(_MIN_PRODUCT_ROWS - len(rows), in_features)])
    batch = inputs.reshape(-1, in_features)
    products = (rows @ batch.T)[: members * out_features]  # (members·out, batch)
    outputs = products.view(members, out_features, len(batch)).transpose(1, 2)
    return outputs.reshape(members, *inputs.shape[:-1], out_features)


def _stack(members: Sequence[WeightDecayModule], name: str, kind: str) -> Tensor:
    tensors = []
    for index, member in enumerate(members):
        model = member.model
        try:
            tensor = model.get_parameter(name) if kind == "parameter" else model.get_buffer(name)
        except AttributeError:
            raise InvalidArgumentError(
                f"members[{index}]", type(model).__name__, f"a model with the {kind} {name!r}"
            ) from None
        if tensors and tensor.shape != tensors[0].shape:
            raise InvalidArgumentError(
                f"members[{index}].{name}",
                tuple(tensor.shape),
                f"the shape of members[0].{name}, {tuple(tensors[0].shape)}",
            )
        tensors.append(tensor.detach())
    return torch.stack(tensors).clone()


def _decay_of(member: WeightDecayModule, name: str) -> float:
    report = member.param_groups_report
    group = next(d.group for d in report.decisions if d.name == name)
    return float(next(g["weight_decay"] for g in report.groups if g["name"] == group))
