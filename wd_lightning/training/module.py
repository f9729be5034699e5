"""A LightningModule that trains any ``nn.Module`` with decay / no-decay parameter groups."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import re
import traceback
from typing import IO, Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import Metric, MetricCollection

from wd_lightning.core.errors import (
    BatchMismatchError,
    CheckpointError,
    InvalidArgumentError,
    TrainingDivergedError,
    check_finite_non_negative,
    check_finite_positive,
)
from wd_lightning.core.grouping import DecayRules, ParamGroupsReport, explain_param_groups
from wd_lightning.core.losses import HalfMSELoss
from wd_lightning.core.norms import squared_norms
from wd_lightning.core.sharding import is_sharded
from wd_lightning.training.cadence import logs_this_step
from wd_lightning.training.checkpoints import is_local_path, read_checkpoint
from wd_lightning.training.compat import (
    initial_hparams,
    restricted_classmethod,
    searching_learning_rate,
)

__all__ = ["Penalty", "WeightDecayModule", "steps_per_epoch_of"]

Penalty = Literal["optimizer", "loss"]

# torch's wording when a tensor's size or type does not suit an operation.
_MISMATCH = re.compile(r"shape|size|dimension|channels|elements|dtype|scalar type", re.IGNORECASE)
# ... and when an index does not: a model's own bug even when it mentions a size.
_INDEX_ERROR = re.compile(r"\bindex\b|out of (bounds|range)", re.IGNORECASE)


class WeightDecayModule(LightningModule):
    """Trains ``model`` on ``(inputs, targets)`` batches with named weight-decay groups.

    ``configure_optimizers`` hands the groups of :func:`wd_lightning.param_groups`
    (``"decay"`` with λ = ``weight_decay``, ``"no_decay"`` with 0) to the
    injected ``optimizer``, so a config can choose the optimizer while the groups
    stay. Logged: ``train/loss`` and ``val/loss`` (the data term, without any
    penalty) and ``val/<metric>`` for each entry of ``val_metrics`` (and
    ``test/loss``, ``test/<metric>`` when testing).
    ``train/loss`` is logged on every step, so callbacks and schedulers can
    monitor it (Lightning writes it to the loggers every ``log_every_n_steps``);
    a non-finite training loss raises :class:`TrainingDivergedError` at the next
    logging step, checkpoint, validation or end of training, whichever comes
    first, naming the step where it happened.

    With ``penalty="optimizer"`` λ is passed as the optimizer's ``weight_decay``.
    With ``penalty="loss"`` the groups get ``weight_decay=0`` and λ/2·‖w‖² of the
    decay group is added to the training loss instead. For SGD, with or without
    momentum, the two are the same update, w ← w − η(∇L + λw), and give the same
    trajectory up to float rounding; for adaptive optimizers such as Adam they
    are too, but AdamW's decoupled decay is a different rule.

    Args:
        model: any module mapping a batch's inputs to predictions.
        weight_decay: λ, a finite number >= 0.
        optimizer: called with the parameter groups; defaults to SGD with lr 0.003.
            Set λ here through ``weight_decay``, never in the optimizer's own arguments.
        lr_scheduler: optional, called with the optimizer. A ``ReduceLROnPlateau``
            follows its ``monitor`` attribute (``lightning.pytorch.cli.ReduceLROnPlateau``
            takes one, e.g. ``"train/loss"``), by default ``"val/loss"``.
        penalty: ``"optimizer"`` or ``"loss"`` (see above).
        loss: maps ``(predictions, targets)`` to a scalar; defaults to :class:`HalfMSELoss`.
        val_metrics: torchmetrics logged as ``val/<name>`` on the validation set,
            and as ``test/<name>`` on the test set.
        decay_rules: which parameters decay (:class:`~wd_lightning.DecayRules`);
            the default rule exempts biases, norm layers, 1-D parameters and
            whatever submodules declare in ``no_weight_decay()``.

    Example:
        >>> from torch import nn
        >>> module = WeightDecayModule(nn.Linear(4, 1), weight_decay=0.1)
        >>> optimizer = module.configure_optimizers()
        >>> [(g["name"], g["weight_decay"], g["lr"]) for g in optimizer.param_groups]
        [('decay', 0.1, 0.003), ('no_decay', 0.0, 0.003)]
    """

    def __init__(
        self,
        model: nn.Module,
        weight_decay: float = 0.0,
        # A lambda with literal arguments: LightningCLI shows and edits it as
        # class_path torch.optim.SGD with init_args {lr: 0.003, ...}.
        optimizer: OptimizerCallable = lambda params: torch.optim.SGD(params, lr=0.003),
        lr_scheduler: LRSchedulerCallable | None = None,
        penalty: Penalty = "optimizer",
        loss: nn.Module | None = None,
        val_metrics: dict[str, Metric] | None = None,
        decay_rules: DecayRules | None = None,
    ) -> None:
        super().__init__()
        self.weight_decay = check_finite_non_negative("weight_decay", weight_decay)
        if penalty not in ("optimizer", "loss"):
            raise InvalidArgumentError("penalty", penalty, "'optimizer' or 'loss'")
        self.penalty = penalty
        # The model, loss and factories are objects, not hyper-parameters: a checkpoint
        # of a subclass that builds its own model (LinearRegression) reloads from the rest.
        self.save_hyperparameters(
            ignore=["model", "optimizer", "lr_scheduler", "loss", "val_metrics", "decay_rules"]
        )
        _plain_numbers(self.hparams, initial_hparams(self))
        self.model = model
        self.loss = loss if loss is not None else HalfMSELoss()
        self.val_metrics = MetricCollection(dict(val_metrics or {}), prefix="val/")
        # The same metrics, with state of their own, for the test set.
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.decay_rules = decay_rules or DecayRules()
        self._penalty_groups: list[tuple[float, list[nn.Parameter]]] = []
        self.param_groups_report: ParamGroupsReport = self._explain_groups()
        # The optimizer itself is built in configure_optimizers only: some need the
        # training set-up (a process group for ZeroRedundancyOptimizer, the device
        # for fused kernels). What can be checked without building it is checked
        # now, before a trainer creates any run directory.
        _check_factory(self.optimizer_factory, needs_weight_decay=penalty == "optimizer")
        # Divergence is tracked on the device and read on logging steps only (see
        # training_step): the first step whose loss was not finite, and that loss.
        self._diverged_step: Tensor | None = None
        self._diverged_loss: Tensor | None = None
        self._sync_loss_every_step = False

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)

    @restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> WeightDecayModule:
        """Lightning's ``load_from_checkpoint``, safe by default and with one-line errors.

        Differences: ``weights_only`` defaults to ``True`` (torch's restricted
        unpickler, whatever the torch version: a checkpoint cannot run code while
        it loads), and a missing, truncated or foreign file, or a checkpoint of
        another model, raises :class:`~wd_lightning.core.errors.CheckpointError`
        naming the path and what was expected. Pass ``weights_only=False`` only
        for files you trust that hold objects safe loading refuses.

        Example:
            >>> import tempfile
            >>> from lightning.pytorch import Trainer
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     trainer = Trainer(max_steps=0, logger=False, enable_progress_bar=False,
            ...                       enable_model_summary=False, default_root_dir=folder)
            ...     trainer.strategy.connect(WeightDecayModule(torch.nn.Linear(3, 1), 0.5))
            ...     trainer.save_checkpoint(f"{folder}/run.ckpt")
            ...     module = WeightDecayModule.load_from_checkpoint(
            ...         f"{folder}/run.ckpt", model=torch.nn.Linear(3, 1))
            >>> module.weight_decay
            0.5
        """
        if is_local_path(checkpoint_path):
            # Check the file before Lightning reads it: its errors are torch's internals.
            read_checkpoint(checkpoint_path, weights_only=weights_only is not False)
        try:
            return super().load_from_checkpoint(
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=weights_only,
                **kwargs,
            )
        except RuntimeError as error:
            lines = str(error).splitlines()
            if not lines or not lines[0].startswith("Error(s) in loading state_dict"):
                raise
            # torch lists every disagreement over several lines; the first names the tensor.
            detail = lines[1].strip() if len(lines) > 1 else lines[0]
            raise CheckpointError(
                "checkpoint_path", str(checkpoint_path), f"a checkpoint of this model: {detail}"
            ) from error

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard the wrapped model with FSDP2 (``fully_shard``).

        The whole model becomes one FSDP2 unit over the ``data_parallel`` mesh
        dimension: each process keeps a shard of every parameter (and of the
        optimizer state) and gathers the full weights for its forward and
        backward. For a per-layer sharding, or tensor parallelism, override
        this hook; a model whose parameters are already DTensors is left
        as it is. Under any other strategy nothing happens.
        """
        if self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        # Imported here: ModelParallelStrategy needs torch's distributed support.
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6 keeps FSDP2 under its first name
            from torch.distributed._composable.fsdp import fully_shard

        if any(is_sharded(p) for p in self.model.parameters()):
            return
        tensor_parallel = self.device_mesh["tensor_parallel"].size()
        if tensor_parallel > 1:
            # Without a tensor-parallel plan those processes would all train on
            # the same batches: the strategy deals data out per data-parallel rank.
            raise InvalidArgumentError(
                "ModelParallelStrategy.tensor_parallel_size",
                tensor_parallel,
                "1 (the model is sharded with FSDP2 only: set data_parallel_size "
                "to the number of processes)",
            )
        fully_shard(self.model, mesh=self.device_mesh["data_parallel"])

    # ----------------------------------------------------------------- optimizer
    def _explain_groups(self) -> ParamGroupsReport:
        try:
            report = explain_param_groups(self.model, self.weight_decay, self.decay_rules)
        except InvalidArgumentError as error:
            if error.argument.split(".")[0] not in DecayRules.__dataclass_fields__:
                raise
            # Name the option as the user spells it on this module.
            raise InvalidArgumentError(
                f"decay_rules.{error.argument}", error.value, error.allowed
            ) from None
        if not any(group["params"] for group in report.groups):
            raise InvalidArgumentError(
                "model", type(self.model).__name__, "a model with at least one trainable parameter"
            )
        if self.penalty == "loss":
            self._penalty_groups = [(g["weight_decay"], g["params"]) for g in report.groups]
        return report

    def _build_optimizer(self) -> Optimizer:
        # Regrouped now: the parameters may have moved or been sharded since construction.
        self.param_groups_report = self._explain_groups()
        groups = self.param_groups_report.groups
        if self.penalty == "loss":
            # The loss carries λ; the optimizer must not apply it a second time.
            groups = [{**group, "weight_decay": 0.0} for group in groups]
        try:
            optimizer = self.optimizer_factory(groups)
        except (ValueError, TypeError) as error:
            raise InvalidArgumentError(
                "optimizer", _factory_name(self.optimizer_factory), f"valid arguments ({error})"
            ) from None
        _check_optimizer(optimizer, needs_weight_decay=self.penalty == "optimizer")
        return optimizer

    def configure_optimizers(self) -> Any:
        optimizer = self._build_optimizer()
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, ReduceLROnPlateau):
            # Lightning steps a plateau scheduler with the metric it is told to follow:
            # the scheduler's own ``monitor`` (lightning.pytorch.cli.ReduceLROnPlateau
            # takes one), else the held-out loss.
            monitor = getattr(scheduler, "monitor", None) or "val/loss"
            return {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": monitor}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def penalty_term(self) -> Tensor:
        """Σ over groups of λ_g/2·‖w_g‖²: what ``penalty="loss"`` adds to the training loss."""
        total = torch.zeros((), device=self.device)
        for weight_decay, params in self._penalty_groups:
            if weight_decay and params:
                # Sum of squares, not norm(...)**2: the norm's gradient is NaN at w = 0.
                shards = [_shard(p) for p in params]
                squares = torch.stack([shard.square().sum() for shard in shards]).sum()
                if any(shard is not p for shard, p in zip(shards, params, strict=True)):
                    # Sharded (FSDP2) parameters: the gradient λ·w must land on each
                    # rank's own shard, where the optimizer applies it, so it is taken
                    # from the shard; the value is that of the whole parameters.
                    whole = squared_norms([p.detach() for p in params]).sum()
                    squares = squares + (whole.to(squares.dtype) - squares).detach()
                total = total + 0.5 * weight_decay * squares
        return total

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        data_loss = self.loss(self._predict(inputs), targets)
        self._record_training_loss(data_loss.detach(), len(inputs))
        if self.penalty == "loss":
            return data_loss + self.penalty_term()
        return data_loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The model's predictions for ``inputs``, or for ``(inputs, targets)`` (targets unused)."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self._predict(inputs)

    # Bookkeeping, not maths: kept out of torch.compile graphs (trainer state and
    # logging would break or re-specialise them on every step).
    @torch.compiler.disable
    def _record_training_loss(self, loss: Tensor, batch_size: int) -> None:
        writes = self._trainer is None or logs_this_step(self.trainer)
        self._track_divergence(loss)
        if writes:
            # Read on the host only where the loggers read the loss anyway: a check
            # on every step would stall an accelerator once per step.
            self._stop_if_diverged()
        # Logged on every step, so that ModelCheckpoint, EarlyStopping and
        # ReduceLROnPlateau find it whatever log_every_n_steps is; Lightning writes
        # it to the loggers on logging steps only.
        if (
            self._trainer is not None
            and self.trainer.world_size > 1
            and (writes or self._sync_loss_every_step or self.trainer.is_last_batch)
        ):
            # Under DDP each process holds a shard of the global batch: averaging the
            # shards' losses makes the value that of the global batch. One all-reduce
            # where the value is written or read (logging steps, the epoch's end, and
            # every step when a callback or scheduler monitors it), not on every step.
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        self.log("train/loss", loss, batch_size=batch_size)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        inputs, targets = batch
        predictions = self._predict(inputs)
        # Each process evaluates its part of the held-out set; sync_dist weighs the
        # parts by their sizes, so the logged loss is that of the whole set.
        loss = self.loss(predictions, targets)
        self.log(f"{stage}/loss", loss, batch_size=len(inputs), sync_dist=True)
        if self.val_metrics:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(predictions, targets)

    def _predict(self, inputs: Tensor) -> Tensor:
        """``self(inputs)``, with a mismatch at the model's input reported as the data's fault.

        Only an error about a size or type, raised by the operation that first
        takes the inputs, is a :class:`BatchMismatchError` (a one-line user
        error in the CLI). Anything deeper in the model, such as an
        out-of-range ``gather`` or two layers that do not fit each other, is
        the model's bug and keeps its traceback.
        """
        try:
            return self(inputs)
        except RuntimeError as error:
            if not _is_input_mismatch(inputs, error):
                raise
            raise BatchMismatchError(
                "inputs", tuple(inputs.shape), _rejected_by(self.model, inputs, error)
            ) from error

    def on_validation_epoch_end(self) -> None:
        # Log the computed values, not the metric objects: torchmetrics already
        # accumulates (and syncs across processes) itself, and Lightning's handling
        # of a logged Metric object costs more than the tiny model's whole step.
        # Every process holds the same computed values; sync_dist=True averages
        # identical numbers, which leaves them as they are and spares a warning.
        if self.val_metrics:
            self.log_dict(self.val_metrics.compute(), sync_dist=True)
            self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        if self.test_metrics:
            self.log_dict(self.test_metrics.compute(), sync_dist=True)
            self.test_metrics.reset()

    # ------------------------------------------------------------- divergence
    def _track_divergence(self, loss: Tensor) -> None:
        """Remember, on the device and without a host sync, the first non-finite loss."""
        if self._diverged_step is None or self._diverged_step.device != loss.device:
            self._diverged_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._diverged_loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = ~torch.isfinite(loss) & (self._diverged_step < 0)
        self._diverged_step = torch.where(first, self.global_step, self._diverged_step)
        self._diverged_loss = torch.where(
            first, loss.to(self._diverged_loss.dtype), self._diverged_loss
        )

    def _stop_if_diverged(self) -> None:
        """Raise :class:`TrainingDivergedError` if a loss since the last check was not finite.

        Called on logging steps, before a checkpoint is written, before
        validation and when training ends: non-finite weights never reach a
        checkpoint, and a fit never ends quietly with them.
        """
        if self._diverged_step is None or self._searching_learning_rate():
            return
        step = int(self._diverged_step)  # the one host sync
        if step < 0:
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else float("nan")
        raise TrainingDivergedError(
            f"training diverged at step {step}: the training loss is "
            f"{self._diverged_loss.item()} with learning rate {lr} and weight_decay "
            f"{self.weight_decay} (lr·weight_decay = {lr * self.weight_decay:.3g}; SGD diverges "
            "once it nears 2); lower the learning rate or weight_decay"
        )

    def _searching_learning_rate(self) -> bool:
        # A learning-rate search (Tuner.lr_find, LearningRateFinder) raises the rate
        # until the loss blows up on purpose, then restores the weights it started from.
        return self._trainer is not None and searching_learning_rate(self.trainer)

    def on_validation_start(self) -> None:
        self._stop_if_diverged()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_diverged()

    def on_train_end(self) -> None:
        self._stop_if_diverged()

    # ------------------------------------------------------------- TensorBoard
    def on_fit_start(self) -> None:
        self._diverged_step = self._diverged_loss = None
        # A monitored value is read by its consumer after any step, not only on
        # logging steps: it must then be the global batch's loss on every step.
        monitors = [getattr(callback, "monitor", None) for callback in self.trainer.callbacks]
        monitors += [config.monitor for config in self.trainer.lr_scheduler_configs]
        self._sync_loss_every_step = "train/loss" in monitors

    def on_train_start(self) -> None:
        # Here rather than at on_fit_start: the training loader is set up, so τ
        # can be given in epochs as well as in steps.
        report, optimizer = self.param_groups_report, self.trainer.optimizers[0]
        # Say where every parameter went before the first step: a wrong grouping
        # is cheap to spot here and expensive to discover after a long run.
        steps_per_epoch = steps_per_epoch_of(self.trainer)
        rank_zero_info(f"Parameter groups:\n{report.summary(optimizer, steps_per_epoch)}")
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                markdown = report.markdown(optimizer, steps_per_epoch)
                logger.experiment.add_text("param_groups", markdown, 0)


def steps_per_epoch_of(trainer: Any) -> int | None:
    """Optimizer steps per training epoch, for τ in epochs; ``None`` when it is not known."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return None
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def _plain_numbers(*hparams: dict[str, Any]) -> None:
    """Store numeric hyper-parameters as Python ``int`` / ``float``.

    A numpy or torch scalar (``weight_decay=np.float64(3)`` passes the checks,
    being a float) would be pickled as such into every checkpoint, and
    ``torch.load(weights_only=True)`` refuses to rebuild it.
    """
    for mapping in hparams:
        for key, value in mapping.items():
            if isinstance(value, bool) or type(value) in (int, float):
                continue
            if isinstance(value, numbers.Integral):
                mapping[key] = int(value)
            elif isinstance(value, numbers.Real):
                mapping[key] = float(value)


def _is_input_mismatch(inputs: Tensor, error: RuntimeError) -> bool:
    """Whether ``error`` is a size or type mismatch raised where the inputs themselves go in.

    The innermost Python frame of the traceback made the failing call; it
    holds the very ``inputs`` tensor only when it passed them on unchanged
    (the first layer's ``forward``, or a top-level ``view`` of the inputs).
    """
    if isinstance(error, torch.OutOfMemoryError):
        return False
    message = str(error)
    if not _MISMATCH.search(message) or _INDEX_ERROR.search(message):
        return False
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    if len(frames) < 2:  # raised in _predict itself: not by the model
        return False
    return any(value is inputs for value in frames[-1].f_locals.values())


def _rejected_by(model: nn.Module, inputs: Tensor, error: RuntimeError) -> str:
    """Which layer of ``model`` raised ``error``, and torch's words for what did not fit."""
    names = {id(module): name for name, module in model.named_modules()}
    layer = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, nn.Module) and id(candidate) in names:
            layer = candidate  # the innermost layer of the model on the way to the error
    where = "the model"
    if layer is not None:
        name = names[id(layer)]
        # A leaf's repr shows its sizes on one line; a container's would be the whole tree.
        shown = repr(layer) if next(layer.children(), None) is None else type(layer).__name__
        where = f"layer {name!r}, {shown}," if name else f"the model, {shown},"
    detail = str(error).strip().splitlines()[0]
    if re.search(r"dtype|scalar type", detail, re.IGNORECASE):
        detail += f"; the inputs are {str(inputs.dtype).removeprefix('torch.')}"
    return f"{where} raised: {detail}"


def _shard(param: Tensor) -> Tensor:
    """This rank's part of a sharded (DTensor) parameter, differentiably; others as they are."""
    return param.to_local() if hasattr(param, "to_local") else param


def _factory_name(factory: Any) -> str:
    # A config's optimizer arrives as a partial with the class as its last positional argument.
    target = (
        factory.args[-1] if isinstance(factory, functools.partial) and factory.args else factory
    )
    return getattr(target, "__name__", repr(target))


def _check_factory(factory: Any, needs_weight_decay: bool) -> None:
    """Check an optimizer factory's arguments without calling it.

    A factory from a config (a ``functools.partial`` of the optimizer class)
    or an optimizer class shows its arguments: a bad lr, an argument the class
    does not take, or a ``weight_decay`` that the groups would override is
    reported now. A plain function shows nothing; it is checked when
    ``configure_optimizers`` builds the optimizer.
    """
    if not callable(factory):
        raise InvalidArgumentError("optimizer", factory, "a callable taking parameter groups")
    target, keywords = factory, {}
    if isinstance(factory, functools.partial):
        # A config's optimizer: a partial with the class as its last positional argument.
        target = factory.args[-1] if factory.args else factory.func
        keywords = dict(factory.keywords)
    if not (isinstance(target, type) and issubclass(target, Optimizer)):
        return
    _check_lr(keywords.get("lr"))
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # pragma: no cover - a class without a signature
        return
    name = target.__name__
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [key for key in keywords if key not in parameters and not takes_any]
    if unknown:
        allowed = ", ".join(p for p in parameters if p not in ("self", "params"))
        raise InvalidArgumentError(f"optimizer.{unknown[0]}", keywords[unknown[0]], allowed)
    declared = parameters.get("weight_decay")
    if needs_weight_decay and declared is None and not takes_any:
        raise InvalidArgumentError(
            "optimizer", name, "an optimizer that takes weight_decay, or penalty='loss'"
        )
    given = keywords.get("weight_decay", 0)
    if declared is not None and given not in (0, declared.default):
        raise InvalidArgumentError(
            "optimizer.weight_decay",
            given,
            f"0 or {declared.default} (its default): set λ with the module's "
            "weight_decay, because the parameter groups override the optimizer's own value",
        )


def _check_lr(lr: Any) -> None:
    if lr is not None:
        check_finite_positive("optimizer.lr", lr)


def _check_optimizer(optimizer: Optimizer, needs_weight_decay: bool) -> None:
    """Reject optimizers that would silently ignore or override the groups' λ, or a bad lr."""
    # A ZeroRedundancyOptimizer shards the state of the optimizer it wraps, which
    # does the updating: that one's weight_decay is what counts.
    optimizer = getattr(optimizer, "optim", optimizer)
    name = type(optimizer).__name__
    if needs_weight_decay and "weight_decay" not in optimizer.defaults:
        raise InvalidArgumentError(
            "optimizer", name, "an optimizer that takes weight_decay, or penalty='loss'"
        )
    if "weight_decay" in optimizer.defaults:
        declared = inspect.signature(type(optimizer)).parameters.get("weight_decay")
        given = optimizer.defaults["weight_decay"]
        # 0 and the class default are what configs carry when nobody chose a value
        # (switching class_path keeps the previous optimizer's weight_decay: 0).
        if declared is not None and given not in (0, declared.default):
            raise InvalidArgumentError(
                "optimizer.weight_decay",
                given,
                f"0 or {declared.default} (its default): set λ with the module's "
                "weight_decay, because the parameter groups override the optimizer's own value",
            )
    for group in optimizer.param_groups:
        _check_lr(group.get("lr"))
