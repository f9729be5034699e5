"""A λ × seed grid trained in one vectorised fit, with the closed-form answer beside each run.

:func:`run_sweep` builds one module per (λ, seed) member, as a fit with
that λ and ``seed_everything(seed)`` would (building once per seed and once
per λ, see :func:`_build_members`), trains them together as a
:class:`~wd_lightning.sweep.ensemble.WeightDecayEnsemble`, and writes into
``output_dir``:

* ``runs/wd=<λ>_seed=<seed>/``: one TensorBoard run per member, with the tags
  and steps of a fit (``tensorboard --logdir <output_dir>/runs`` overlays them),
  and the HPARAMS and Text entries of that fit, diverged members included;
* ``summary.csv``: one row per member (see :data:`SUMMARY_COLUMNS`);
* ``curves.csv``: the training and held-out loss of every member per epoch,
  written epoch by epoch as the sweep trains;
* ``ridge_curve.csv``: the closed-form solution over a fine λ grid, when the
  model is the book's linear regression (see :mod:`wd_lightning.core.analysis`).
"""

from __future__ import annotations

import copy
import csv
import math
import shutil
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import (
    Callback,
    LightningDataModule,
    LightningModule,
    Trainer,
    seed_everything,
)
from torch import nn

from wd_lightning.core import analysis, timescale
from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_distinct,
    check_finite_non_negative,
    check_int_at_least,
)
from wd_lightning.core.losses import HalfMSELoss
from wd_lightning.sweep.distributed import (
    MemberParallelStrategy,
    gather_to_rank_zero,
    member_share,
)
from wd_lightning.sweep.ensemble import WeightDecayEnsemble, check_sweep_trainer
from wd_lightning.training.hparams import log_final_hparams
from wd_lightning.training.module import WeightDecayModule, steps_per_epoch_of
from wd_lightning.training.scalar_runs import ScalarRuns

__all__ = [
    "SUMMARY_COLUMNS",
    "SweepMember",
    "SweepResult",
    "format_table",
    "run_sweep",
    "sweep_members",
]

#: The columns of ``summary.csv``. ``weight_norm`` is ‖w‖ of the decayed group;
#: the ``ridge_*``, ``*_space_*`` and ``distance_to_ridge`` columns are filled
#: for the linear model on in-memory data (empty otherwise). For λ = 0 the
#: "ridge" solution is where gradient descent converges from the member's
#: initial weights: the interpolant nearest to them. ``timescale_steps`` is
#: τ = 1/(lr·λ) of the decayed group at its last learning rate and
#: ``init_remaining`` the factor ∏(1 − lr·λ) its initial weights were
#: multiplied by (see :mod:`wd_lightning.core.timescale`); both are empty
#: where no closed form holds (coupled λ under an adaptive optimizer). After
#: these come ``val_<name>`` for each of the model's ``val_metrics``.
SUMMARY_COLUMNS = (
    "weight_decay",
    "seed",
    "status",
    "diverged_at_step",
    "steps",
    "train_loss",
    "val_loss",
    "weight_norm",
    "total_weight_norm",
    "initial_weight_norm",
    "ridge_weight_norm",
    "distance_to_ridge",
    "ridge_val_loss",
    "row_space_norm",
    "null_space_norm",
    "predicted_null_space_norm",
    "timescale_steps",
    "init_remaining",
)
CURVE_COLUMNS = ("weight_decay", "seed", "epoch", "step", "train_loss", "val_loss")
RIDGE_COLUMNS = ("weight_decay", "ridge_weight_norm", "ridge_train_loss", "ridge_val_loss")

# Trainer settings a sweep owns: it writes its own per-member logs and files,
# and every member sees every batch in the same order, whatever the processes.
_SWEEP_TRAINER_SETTINGS = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "use_distributed_sampler": False,
}
# The longest a member's events wait in memory: a flush appends to every
# member's file, which for ten thousand members takes a noticeable moment.
FLUSH_SECONDS = 10.0
# And the most waiting events may take, per member (a few hundred steps' worth),
# between a floor and a ceiling: memory grows with the members, not the steps.
_BUFFERED_BYTES_PER_MEMBER = 4 * 2**10
_BUFFERED_BYTES_RANGE = (4 * 2**20, 64 * 2**20)
_ROW_END = "\r\n"  # what csv writers end rows with
_OUTPUTS = ("runs", "summary.csv", "curves.csv", "ridge_curve.csv", "figures", "config.yaml")


@dataclass(frozen=True)
class SweepMember:
    """One run of the grid: a λ and the seed of its initial weights."""

    weight_decay: float
    seed: int

    @property
    def run_name(self) -> str:
        """Its TensorBoard run (folder) name, e.g. ``wd=3_seed=0``."""
        return f"wd={self.weight_decay:g}_seed={self.seed}"


def sweep_members(weight_decays: Iterable[Any], seeds: Iterable[Any]) -> list[SweepMember]:
    """The λ × seed grid, λ-major, after checking both lists.

    Example:
        >>> [m.run_name for m in sweep_members([0, 3], [0, 1])]
        ['wd=0_seed=0', 'wd=0_seed=1', 'wd=3_seed=0', 'wd=3_seed=1']
    """
    weight_decays, seeds = list(weight_decays), list(seeds)
    check_distinct("weight_decays", weight_decays, "λ values")
    for value in weight_decays:
        check_finite_non_negative("weight_decays", value)
    check_distinct("seeds", seeds, "integer seeds")
    for seed in seeds:
        check_int_at_least("seeds", seed, 0)
    return [SweepMember(float(wd), seed) for wd in weight_decays for seed in seeds]


@dataclass
class SweepResult:
    """The rows of ``summary.csv`` and where the sweep's files are.

    In a sweep split across processes, global rank zero holds every row;
    the other processes get ``rows == []`` and ``is_global_zero`` false.
    """

    rows: list[dict[str, Any]]
    output_dir: Path
    is_global_zero: bool = True

    def table(self) -> str:
        """The summary as a fixed-width table (what the CLI prints)."""
        return format_table(self.rows)


def run_sweep(
    build_module: Callable[[float], WeightDecayModule],
    datamodule: LightningDataModule,
    weight_decays: Sequence[float],
    seeds: Sequence[int],
    output_dir: str | Path,
    trainer_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> SweepResult:
    """Train every (λ, seed) member in one vectorised fit and write its results.

    Args:
        build_module: called with λ, after ``seed_everything(seed)``, once per
            member; must build the same architecture every time, as a fit
            would (e.g. ``lambda wd: LinearRegression(weight_decay=wd)``).
        datamodule: the data every member trains on (same batches, same order).
        weight_decays: the λ values.
        seeds: the seeds of the initial weights.
        output_dir: where the runs and tables go; must be new or empty unless
            ``overwrite`` is set.
        trainer_kwargs: :class:`~lightning.pytorch.Trainer` arguments (e.g.
            ``max_epochs``); logging and checkpoints are the sweep's own. With
            several processes (``devices``, ``num_nodes``; ``strategy`` "ddp"
            or "auto") each trains its share of the members under
            :class:`~wd_lightning.sweep.distributed.MemberParallelStrategy`
            and global rank zero writes the tables (see the README); call it
            from a script, which Lightning's launcher runs once per process.
            Options under which a member could not equal its fit are refused
            (see :meth:`~wd_lightning.sweep.ensemble.WeightDecayEnsemble.on_fit_start`).
        overwrite: replace the files of an earlier sweep in ``output_dir``.

    Example:
        >>> import tempfile
        >>> from wd_lightning import LinearRegression, SyntheticRegressionDataModule
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = run_sweep(
        ...         lambda wd: LinearRegression(weight_decay=wd),
        ...         SyntheticRegressionDataModule(),
        ...         weight_decays=[0.0, 3.0],
        ...         seeds=[0],
        ...         output_dir=folder,
        ...         trainer_kwargs={"max_epochs": 100, "enable_progress_bar": False},
        ...     )
        >>> [(row["weight_decay"], round(row["weight_norm"], 2)) for row in result.rows]
        [(0.0, 14.12), (3.0, 0.39)]
    """
    members = sweep_members(weight_decays, seeds)
    trainer = _sweep_trainer(trainer_kwargs or {})
    rank, world_size = trainer.global_rank, trainer.world_size
    output_dir = Path(output_dir)
    if rank == 0:
        # Before any process writes: the others write only once training has
        # started, after every process has joined the process group.
        _prepare_output_dir(output_dir, overwrite)
    share = member_share(len(members), rank, world_size)
    local = members[share.start : share.stop]
    modules, initial, described_by = _build_members(build_module, local)
    # Built before the writers: a configuration it refuses leaves no runs behind.
    ensemble = WeightDecayEnsemble(modules)
    del modules  # the ensemble holds the stacked copies; the members can go
    low, high = _BUFFERED_BYTES_RANGE
    writers = ScalarRuns(
        [output_dir / "runs" / member.run_name for member in local],
        flush_seconds=FLUSH_SECONDS,
        max_buffered_bytes=min(max(_BUFFERED_BYTES_PER_MEMBER * len(local), low), high),
    )
    ensemble.writers = writers
    part = output_dir / ("curves.csv" if world_size == 1 else f"curves.csv.rank{rank}")
    curves = CurveStream(part, local, header=world_size == 1)
    trainer.callbacks.append(curves)
    try:
        trainer.fit(ensemble, datamodule)
        rows = _summary_rows(local, ensemble, trainer, initial)
        problem = _linear_problem(ensemble, datamodule)
        if problem is not None:
            _add_linear_analysis(rows, ensemble, problem, trainer, initial)
        runs = [writers.run(index) for index in range(len(local))]
        _write_hparams(runs, local, described_by, datamodule, rows, trainer)
    finally:
        writers.close()
        curves.close()
    metric_columns = [f"val_{tag.removeprefix('val/')}" for tag in _final_metrics(ensemble)]
    rows = gather_to_rank_zero(rows, world_size)
    if rank != 0:
        return SweepResult([], output_dir, is_global_zero=False)
    _write_csv(output_dir / "summary.csv", (*SUMMARY_COLUMNS, *metric_columns), rows)
    if world_size > 1:
        sizes = [len(member_share(len(members), r, world_size)) for r in range(world_size)]
        _merge_curve_parts(output_dir, sizes)
    if problem is not None:
        ridge_rows = _ridge_curve(problem, members)
        _write_csv(output_dir / "ridge_curve.csv", RIDGE_COLUMNS, ridge_rows)
    return SweepResult(rows, output_dir)


def _build_members(
    build_module: Callable[[float], WeightDecayModule], members: Sequence[SweepMember]
) -> tuple[list[WeightDecayModule], list[dict[str, torch.Tensor]], list[WeightDecayModule]]:
    """One module per member as a fit would build it, its initial parameters, and its hparams.

    The third list holds, per member, a module built with the member's λ,
    whose saved hyper-parameters are the member's (for the HPARAMS tab).

    Building a module (parsing its configuration, grouping its parameters,
    checking its optimizer) costs milliseconds, a member of the book's sweep
    microseconds to train. So a module is built once per seed (its initial
    weights) and once per λ (its parameter groups); each member is a shallow
    copy of its seed's module carrying its λ's groups, sharing the seed's
    tensors until the ensemble stacks them. That is the same member as a
    build of its own as long as the initial weights depend on the seed alone,
    which is checked on the first seed for every λ: a builder whose draws
    depend on λ gets every member built on its own.
    """
    by_seed: dict[int, WeightDecayModule] = {}
    by_weight_decay: dict[float, WeightDecayModule] = {}
    first_seed = members[0].seed if members else 0
    for member in members:
        if member.seed not in by_seed:
            by_seed[member.seed] = _build(build_module, member)
    for member in members:
        if member.weight_decay not in by_weight_decay:
            seeded = SweepMember(member.weight_decay, first_seed)
            by_weight_decay[member.weight_decay] = _build(build_module, seeded)
    reference = _parameters(by_seed[first_seed]) if members else {}
    if not all(
        _same_tensors(_parameters(module), reference) for module in by_weight_decay.values()
    ):
        modules = [_build(build_module, member) for member in members]
        return modules, [_parameters(module) for module in modules], modules

    modules = []
    for member in members:
        module = copy.copy(by_seed[member.seed])
        grouped = by_weight_decay[member.weight_decay]
        module.weight_decay = grouped.weight_decay
        module.param_groups_report = grouped.param_groups_report
        modules.append(module)
    initial = {seed: _parameters(module) for seed, module in by_seed.items()}
    described_by = [by_weight_decay[member.weight_decay] for member in members]
    return modules, [initial[member.seed] for member in members], described_by


def _build(
    build_module: Callable[[float], WeightDecayModule], member: SweepMember
) -> WeightDecayModule:
    seed_everything(member.seed, workers=True, verbose=False)
    module = build_module(member.weight_decay)
    if not isinstance(module, WeightDecayModule):
        raise InvalidArgumentError(
            "model", type(module).__name__, "a WeightDecayModule (e.g. LinearRegression)"
        )
    return module


def _parameters(module: WeightDecayModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


class CurveStream(Callback):
    """Appends every member's training and held-out loss to ``curves.csv`` as epochs end.

    Rows go out epoch by epoch (all members of epoch 0, then of epoch 1, ...),
    and the ensemble's record keeps only what the summary needs, so a sweep's
    memory does not grow with its length. ``train_loss`` is the epoch's mean
    training loss, ``val_loss`` the last validation of the epoch; ``step`` the
    later of their steps.
    """

    def __init__(self, path: Path, members: Sequence[SweepMember], header: bool = True) -> None:
        self.path = path
        self._prefixes = [f"{m.weight_decay!r},{m.seed}," for m in members]
        self._header = header
        # Opened at the first write, once training runs: under torchrun or SLURM
        # every process starts at once, and only rank zero prepares the folder
        # (before it joins the others in the process group).
        self._handle: Any = None
        self._written_through = -1  # the last epoch written

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(pl_module, before_epoch=trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Callbacks run before the module's own hook; the last epoch's mean is in by now.
        self._write(pl_module, before_epoch=None)

    def close(self) -> None:
        """Close the file (also when training failed)."""
        if self._handle is not None:
            self._handle.close()

    def _write(self, ensemble: Any, before_epoch: int | None) -> None:
        if self._handle is None:
            self._handle = self.path.open("w", newline="")
            if self._header:
                self._handle.write(",".join(CURVE_COLUMNS) + _ROW_END)
        record = ensemble.record
        by_epoch: dict[int, dict[str, Any]] = {}
        for key, series in (("train_loss", record.train_loss), ("val_loss", record.val_loss)):
            for epoch, step, values in series:
                done = before_epoch is None or epoch < before_epoch
                if epoch <= self._written_through or not done:
                    continue
                point = by_epoch.setdefault(epoch, {"step": step})
                point["step"] = max(point["step"], step)
                point[key] = values
        for epoch in sorted(by_epoch):
            point = by_epoch[epoch]
            train = _cells(point.get("train_loss"), len(self._prefixes))
            val = _cells(point.get("val_loss"), len(self._prefixes))
            middle = f"{epoch},{point['step']},"
            self._handle.write(
                "".join(
                    f"{prefix}{middle}{t},{v}{_ROW_END}"
                    for prefix, t, v in zip(self._prefixes, train, val, strict=True)
                )
            )
            self._written_through = epoch
        # Written points leave the record; the summary reads the last validation.
        record.train_loss[:] = [p for p in record.train_loss if p[0] > self._written_through]
        record.val_loss[:] = [p for p in record.val_loss if p[0] > self._written_through] or (
            record.val_loss[-1:]
        )
        # The validation metrics are not curves: the summary needs the last ones only.
        record.val_metrics[:] = record.val_metrics[-1:]


def _cells(values: torch.Tensor | None, count: int) -> list[str]:
    if values is None:
        return [""] * count
    return [repr(value) for value in values.tolist()]


def _merge_curve_parts(output_dir: Path, sizes: list[int]) -> None:
    """Interleave the processes' parts epoch by epoch: the rows of a one-process sweep."""
    parts = [output_dir / f"curves.csv.rank{rank}" for rank in range(len(sizes))]
    handles = [part.open(newline="") for part in parts]
    try:
        with (output_dir / "curves.csv").open("w", newline="") as out:
            out.write(",".join(CURVE_COLUMNS) + _ROW_END)
            while True:
                blocks = [
                    "".join(handle.readline() for _ in range(size))
                    for handle, size in zip(handles, sizes, strict=True)
                ]
                if not any(blocks):
                    break
                out.write("".join(blocks))
    finally:
        for handle in handles:
            handle.close()
    for part in parts:
        part.unlink()


# ------------------------------------------------------------------ set-up
def _prepare_output_dir(output_dir: Path, overwrite: bool) -> Path:
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidArgumentError("output_dir", str(output_dir), "a directory, not a file")
    earlier = [output_dir / name for name in _OUTPUTS if (output_dir / name).exists()]
    if earlier and not overwrite:
        raise InvalidArgumentError(
            "output_dir",
            str(output_dir),
            "a directory without an earlier sweep's results (or overwrite=True to replace them)",
        )
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def _sweep_trainer(trainer_kwargs: dict[str, Any]) -> Trainer:
    kwargs = {"max_epochs": 100, **trainer_kwargs, **_SWEEP_TRAINER_SETTINGS}
    kwargs.setdefault("devices", 1)
    trainer = Trainer(**kwargs)
    if trainer.world_size > 1:
        # Several processes: each trains its own members, with nothing averaged.
        strategy = trainer_kwargs.get("strategy", "auto")
        if strategy not in ("auto", "ddp"):
            raise InvalidArgumentError(
                "trainer.strategy",
                strategy,
                "'ddp' or 'auto' with several devices or nodes: the sweep splits its "
                "members across the processes (without averaging anything)",
            )
        trainer = Trainer(**{**kwargs, "strategy": MemberParallelStrategy()})
    check_sweep_trainer(trainer)
    return trainer


# ----------------------------------------------------------------- results
def _summary_rows(
    members: list[SweepMember],
    ensemble: WeightDecayEnsemble,
    trainer: Trainer,
    initial: list[dict[str, torch.Tensor]],
) -> list[dict[str, Any]]:
    norms = {tag: values.tolist() for tag, values in ensemble.weight_norms().items()}
    weight_tag = "weight_norm/decay" if "weight_norm/decay" in norms else "weight_norm/total"
    alive = ensemble.alive.tolist()
    diverged_at = ensemble.diverged_at.tolist()
    last_train = ensemble.record.last_train_loss
    train = last_train.tolist() if last_train is not None else [math.nan] * len(members)
    val = ensemble.record.val_loss[-1][2].tolist() if ensemble.record.val_loss else None
    decay_names = ensemble.groups.get("decay", list(initial[0]) if initial else [])
    initial_norms: dict[int, float] = {}  # members of one seed share their initial tensors
    metrics = {tag: values.tolist() for tag, values in _final_metrics(ensemble).items()}
    timescales = _timescales(ensemble, trainer)
    rows = []
    for i, member in enumerate(members):
        start = initial[i]
        if id(start) not in initial_norms:
            squares = sum(float(start[n].square().sum()) for n in decay_names)
            initial_norms[id(start)] = math.sqrt(squares)
        rows.append(
            {
                "weight_decay": member.weight_decay,
                "seed": member.seed,
                "status": "ok" if alive[i] else "diverged",
                "diverged_at_step": None if alive[i] else diverged_at[i],
                "steps": trainer.global_step if alive[i] else diverged_at[i],
                "train_loss": train[i] if alive[i] else math.nan,
                "val_loss": val[i] if (alive[i] and val is not None) else math.nan,
                "weight_norm": norms[weight_tag][i] if alive[i] else math.nan,
                "total_weight_norm": norms["weight_norm/total"][i] if alive[i] else math.nan,
                "initial_weight_norm": initial_norms[id(start)],
                **timescales[i],
                **{
                    f"val_{tag.removeprefix('val/')}": values[i] if alive[i] else math.nan
                    for tag, values in metrics.items()
                },
            }
        )
    return rows


def _final_metrics(ensemble: WeightDecayEnsemble) -> dict[str, torch.Tensor]:
    """The last validation's metrics, ``{"val/<name>": (members,)}``; empty without any."""
    return ensemble.record.val_metrics[-1][2] if ensemble.record.val_metrics else {}


def _timescales(ensemble: WeightDecayEnsemble, trainer: Trainer) -> list[dict[str, Any]]:
    """τ at the last learning rate and the factor left of the initial weights, per member."""
    remaining = ensemble.init_remaining
    group_name = "decay" if "decay" in remaining else next(iter(remaining), None)
    if group_name is None:
        return [{} for _ in range(ensemble.num_members)]
    group = next(g for g in trainer.optimizers[0].param_groups if g["name"] == group_name)
    cells = []
    for factor in remaining[group_name]:
        weight_decay = factor.decay.weight_decay
        cells.append(
            {
                "timescale_steps": timescale.decay_timescale(
                    float(group["lr"]), weight_decay, factor.decay
                ),
                "init_remaining": float(factor.value),
            }
        )
    return cells


def _linear_problem(
    ensemble: WeightDecayEnsemble, datamodule: LightningDataModule
) -> tuple[torch.Tensor, ...] | None:
    """The training and held-out data, when the closed form applies to this sweep."""
    template = ensemble.template
    model = template.model
    data = [getattr(datamodule, name, None) for name in ("X_train", "y_train", "X_val", "y_val")]
    if any(tensor is None for tensor in data):
        return None
    if not (isinstance(model, nn.Linear) and model.out_features == 1 and model.bias is not None):
        return None
    if not isinstance(template.loss, HalfMSELoss):
        return None
    factors = ensemble.decay_factors
    # The closed form penalises w with the member's λ and leaves the bias free.
    if "bias" in factors and factors["bias"].any():
        return None
    return tuple(data)


def _add_linear_analysis(
    rows: list[dict[str, Any]],
    ensemble: WeightDecayEnsemble,
    problem: tuple[torch.Tensor, ...],
    trainer: Trainer,
    initial: list[dict[str, torch.Tensor]],
) -> None:
    X_train, y_train, X_val, y_val = problem
    weights = ensemble.stacked_parameters()["weight"].detach().cpu().flatten(1).double()
    row_space = analysis.RowSpace(X_train)
    plain_sgd = _plain_sgd_lr(trainer)
    decays = ensemble.decay_factors["weight"].tolist()
    distinct = sorted(set(decays))
    ridge = dict(zip(distinct, analysis.ridge_path(X_train, y_train, distinct), strict=True))
    # Solved once per λ, or per seed for λ = 0 (the interpolant nearest the initial weights).
    interpolants: dict[int, analysis.LinearSolution] = {}
    null_norms: dict[int, float] = {}
    val_losses: dict[int, float] = {}
    for i, row in enumerate(rows):
        start = initial[i]
        if decays[i] > 0:
            target = ridge[decays[i]]
        else:
            if id(start) not in interpolants:
                interpolants[id(start)] = analysis.interpolant_from(
                    X_train, y_train, start["weight"], start["bias"].item()
                )
            target = interpolants[id(start)]
        if id(target) not in val_losses:
            val_losses[id(target)] = analysis.half_mse(X_val, y_val, target)
        row["ridge_weight_norm"] = target.weight_norm
        row["ridge_val_loss"] = val_losses[id(target)]
        if plain_sgd is not None and row["status"] == "ok":
            if id(start) not in null_norms:
                null_norms[id(start)] = float(row_space.split(start["weight"]).null.norm())
            row["predicted_null_space_norm"] = analysis.predicted_null_space_norm(
                null_norms[id(start)], plain_sgd, decays[i], trainer.global_step
            )
        if row["status"] != "ok":
            continue
        # One member at a time: the figures must not depend on how many members
        # a process holds (a batched product may round differently).
        weight = weights[i]
        split = row_space.split(weight)
        row["distance_to_ridge"] = float((weight - target.weight).norm())
        row["row_space_norm"] = float(split.row.norm())
        row["null_space_norm"] = float(split.null.norm())


def _plain_sgd_lr(trainer: Trainer) -> float | None:
    """The learning rate, if the run was SGD without momentum at a constant rate."""
    optimizer = trainer.optimizers[0]
    if type(optimizer) is not torch.optim.SGD or trainer.lr_scheduler_configs:
        return None
    rates = {group["lr"] for group in optimizer.param_groups}
    if len(rates) != 1 or any(group["momentum"] for group in optimizer.param_groups):
        return None
    return float(rates.pop())


def _ridge_curve(
    problem: tuple[torch.Tensor, ...], members: list[SweepMember]
) -> list[dict[str, Any]]:
    """The closed-form solution on a log grid spanning the swept λ (plus λ = 0)."""
    X_train, y_train, X_val, y_val = problem
    positive = sorted({m.weight_decay for m in members if m.weight_decay > 0})
    low, high = (positive[0] / 10, positive[-1] * 10) if positive else (1e-3, 1e3)
    grid = [0.0, *torch.logspace(math.log10(low), math.log10(high), 81).tolist()]
    solutions = analysis.ridge_path(X_train, y_train, grid)
    return [
        {
            "weight_decay": weight_decay,
            "ridge_weight_norm": solution.weight_norm,
            "ridge_train_loss": analysis.half_mse(X_train, y_train, solution),
            "ridge_val_loss": analysis.half_mse(X_val, y_val, solution),
        }
        for weight_decay, solution in zip(grid, solutions, strict=True)
    ]


def _write_hparams(
    writers: list[Any],
    members: list[SweepMember],
    modules: list[WeightDecayModule],
    datamodule: LightningDataModule,
    rows: list[dict[str, Any]],
    trainer: Trainer,
) -> None:
    """Each run's HPARAMS entry and Text tab, as a fit of that member writes them.

    The hyper-parameters are a fit's (:func:`~wd_lightning.training.hparams.run_hparams`)
    with the member's λ and seed; a diverged member is listed too, with
    ``status`` ``diverged``, as a failed session.
    """
    from torch.utils.tensorboard.summary import text

    built: dict[int, tuple[Any, Any]] = {}  # members of one λ share a module: build once
    for writer, member, module, row in zip(writers, members, modules, rows, strict=True):
        if id(module) not in built:
            # The member's own optimizer, as its fit would build it: the ensemble's
            # groups hold every member at once and λ = 0 (applied per member).
            optimizer = module.configure_optimizers()
            optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
            report = module.param_groups_report.markdown(optimizer, steps_per_epoch_of(trainer))
            built[id(module)] = optimizer, text("param_groups", report)
        optimizer, report_summary = built[id(module)]
        writer.add_summary(report_summary, 0)
        tags = ["train/loss", "val/loss", "weight_norm/total"]
        tags += [f"val/{name}" for name in module.val_metrics.keys(keep_base=True)]
        log_final_hparams(
            [writer],
            module,
            datamodule,
            optimizer=optimizer,
            seed=member.seed,
            metric_tags=tags,
            step=trainer.global_step,
            status=row["status"],
        )


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _cell(row.get(column)) for column in columns})


def _cell(value: Any) -> Any:
    # Full precision (repr) so a row can be compared with a separate fit.
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def format_table(rows: list[dict[str, Any]], most_rows: int = 100) -> str:
    """A fixed-width table of the summary's main columns.

    A sweep of more than ``most_rows`` runs is shown one line per λ instead:
    how many of its seeds trained, and the median of each column over them
    (every run stays in ``summary.csv``).

    Example:
        >>> print(format_table([{"weight_decay": 3.0, "seed": 0, "status": "ok",
        ...     "train_loss": 1e-3, "val_loss": 0.1, "weight_norm": 0.39}]))
               λ  seed  status    train_loss   val_loss       ‖w‖      ‖w*‖   ‖w − w*‖   null ‖P⊥w‖
               3     0  ok             0.001        0.1      0.39         -          -            -
        >>> rows = [{"weight_decay": wd, "seed": seed, "status": "ok", "val_loss": wd + seed}
        ...         for wd in (0.0, 3.0) for seed in range(3)]
        >>> print(format_table(rows, most_rows=4))
               λ  seeds  ok       train_loss   val_loss       ‖w‖      ‖w*‖   ‖w − w*‖   null ‖P⊥w‖
               0      3  3/3               -          1         -         -          -            -
               3      3  3/3               -          4         -         -          -            -
        medians over the seeds that trained; every run is in summary.csv
    """
    columns = (
        ("train_loss", 10),
        ("val_loss", 9),
        ("weight_norm", 8),
        ("ridge_weight_norm", 8),
        ("distance_to_ridge", 9),
        ("null_space_norm", 11),
    )
    names = f"{'train_loss':>10}  {'val_loss':>9}  {'‖w‖':>8}  {'‖w*‖':>8}  {'‖w − w*‖':>9}  "
    names += f"{'null ‖P⊥w‖':>11}"

    def cells(row: dict[str, Any]) -> str:
        return "  ".join(f"{_fmt(row.get(column)):>{width}}" for column, width in columns)

    if len(rows) <= most_rows:
        lines = [f"{'λ':>8}  {'seed':>4}  {'status':<8}  {names}"]
        for row in rows:
            lines.append(
                f"{row['weight_decay']:>8g}  {row['seed']:>4}  {row['status']:<8}  {cells(row)}"
            )
        return "\n".join(lines)
    by_weight_decay: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        by_weight_decay.setdefault(row["weight_decay"], []).append(row)
    lines = [f"{'λ':>8}  {'seeds':>5}  {'ok':<7}  {names}"]
    for weight_decay, runs in by_weight_decay.items():
        trained = [run for run in runs if run["status"] == "ok"]
        medians = {
            column: statistics.median(values) if values else None
            for column, _ in columns
            for values in [[r[column] for r in trained if r.get(column) is not None]]
        }
        ok = f"{len(trained)}/{len(runs)}"
        lines.append(f"{weight_decay:>8g}  {len(runs):>5}  {ok:<7}  {cells(medians)}")
    lines.append("medians over the seeds that trained; every run is in summary.csv")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"
