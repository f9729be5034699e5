"""A λ × seed grid trained in one vectorised fit, with the closed-form answer beside each run.

:func:`run_sweep` builds one module per (λ, seed) member, exactly as a fit
with that λ and ``seed_everything(seed)`` would, trains them together as a
:class:`~wd_lightning.sweep.ensemble.WeightDecayEnsemble`, and writes into
``output_dir``:

* ``runs/wd=<λ>_seed=<seed>/``: one TensorBoard run per member, with the tags
  and steps of a fit (``tensorboard --logdir <output_dir>/runs`` overlays them),
  and the HPARAMS and Text entries of that fit, diverged members included;
* ``summary.csv``: one row per member (see :data:`SUMMARY_COLUMNS`);
* ``curves.csv``: the training and held-out loss of every member per epoch;
* ``ridge_curve.csv``: the closed-form solution over a fine λ grid, when the
  model is the book's linear regression (see :mod:`wd_lightning.core.analysis`).
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch import nn

from wd_lightning.core import analysis, timescale
from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_distinct,
    check_finite_non_negative,
    check_int_at_least,
)
from wd_lightning.core.losses import HalfMSELoss
from wd_lightning.sweep.ensemble import WeightDecayEnsemble, check_sweep_trainer
from wd_lightning.training.hparams import log_final_hparams
from wd_lightning.training.module import WeightDecayModule, steps_per_epoch_of
from wd_lightning.training.tensorboard import RunWriter

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

# Trainer settings a sweep owns: it writes its own per-member logs and files.
_SWEEP_TRAINER_SETTINGS = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}
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
    """The rows of ``summary.csv`` and where the sweep's files are."""

    rows: list[dict[str, Any]]
    output_dir: Path

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
            ``max_epochs``); logging and checkpoints are the sweep's own, and
            it runs on one device. Options under which a member could not
            equal its fit are refused (see
            :meth:`~wd_lightning.sweep.ensemble.WeightDecayEnsemble.on_fit_start`).
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
    output_dir = _prepare_output_dir(Path(output_dir), overwrite)
    trainer = _sweep_trainer(trainer_kwargs or {})
    modules = []
    for member in members:
        seed_everything(member.seed, workers=True, verbose=False)
        module = build_module(member.weight_decay)
        if not isinstance(module, WeightDecayModule):
            raise InvalidArgumentError(
                "model", type(module).__name__, "a WeightDecayModule (e.g. LinearRegression)"
            )
        modules.append(module)
    initial = [{n: p.detach().clone() for n, p in m.model.named_parameters()} for m in modules]
    # Built before the writers: a configuration it refuses leaves no runs behind.
    ensemble = WeightDecayEnsemble(modules)
    writers = [RunWriter(output_dir / "runs" / member.run_name) for member in members]
    ensemble.writers = writers
    try:
        trainer.fit(ensemble, datamodule)
        rows = _summary_rows(members, ensemble, trainer, initial)
        problem = _linear_problem(ensemble, datamodule)
        if problem is not None:
            _add_linear_analysis(rows, ensemble, problem, trainer, initial)
        _write_hparams(writers, members, modules, datamodule, rows, trainer)
    finally:
        for writer in writers:
            writer.close()
    metric_columns = [f"val_{tag.removeprefix('val/')}" for tag in _final_metrics(ensemble)]
    _write_csv(output_dir / "summary.csv", (*SUMMARY_COLUMNS, *metric_columns), rows)
    _write_csv(output_dir / "curves.csv", CURVE_COLUMNS, _curve_rows(members, ensemble))
    if problem is not None:
        ridge_rows = _ridge_curve(problem, members)
        _write_csv(output_dir / "ridge_curve.csv", RIDGE_COLUMNS, ridge_rows)
    return SweepResult(rows, output_dir)


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
    if trainer.world_size != 1:
        raise InvalidArgumentError(
            "trainer.devices",
            trainer_kwargs.get("devices"),
            "one device: a sweep vectorises its members on a single device",
        )
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
    decay_names = ensemble.groups.get("decay", list(initial[0]))
    metrics = {tag: values.tolist() for tag, values in _final_metrics(ensemble).items()}
    timescales = _timescales(ensemble, trainer)
    rows = []
    for i, member in enumerate(members):
        initial_norm = math.sqrt(sum(float(initial[i][n].square().sum()) for n in decay_names))
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
                "initial_weight_norm": initial_norm,
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
    group_name = (
        "decay" if "decay" in ensemble.init_remaining else next(iter(ensemble.init_remaining), None)
    )
    if group_name is None:
        return [{} for _ in range(ensemble.num_members)]
    group = next(g for g in trainer.optimizers[0].param_groups if g["name"] == group_name)
    cells = []
    for factor in ensemble.init_remaining[group_name]:
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
    weights = ensemble.stacked_parameters()["weight"].detach().cpu()
    row_space = analysis.RowSpace(X_train)
    plain_sgd = _plain_sgd_lr(trainer)
    decays = ensemble.decay_factors["weight"].tolist()
    distinct = sorted(set(decays))
    ridge = dict(zip(distinct, analysis.ridge_path(X_train, y_train, distinct), strict=True))
    for i, row in enumerate(rows):
        weight_decay = decays[i]
        if weight_decay > 0:
            target = ridge[weight_decay]
        else:
            target = analysis.interpolant_from(
                X_train, y_train, initial[i]["weight"], initial[i]["bias"].item()
            )
        row["ridge_weight_norm"] = target.weight_norm
        row["ridge_val_loss"] = analysis.half_mse(X_val, y_val, target)
        if row["status"] != "ok":
            continue
        if plain_sgd is not None:
            null0 = float(row_space.split(initial[i]["weight"]).null.norm())
            row["predicted_null_space_norm"] = analysis.predicted_null_space_norm(
                null0, plain_sgd, weight_decay, trainer.global_step
            )
        weight = weights[i].reshape(-1)
        split = row_space.split(weight)
        row["distance_to_ridge"] = float((weight.double() - target.weight).norm())
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


def _curve_rows(members: list[SweepMember], ensemble: WeightDecayEnsemble) -> list[dict[str, Any]]:
    by_epoch: dict[int, dict[str, Any]] = {}
    for key, series in (
        ("train_loss", ensemble.record.train_loss),
        ("val_loss", ensemble.record.val_loss),
    ):
        for epoch, step, values in series:
            point = by_epoch.setdefault(epoch, {"epoch": epoch, "step": step})
            point["step"] = max(point["step"], step)
            point[key] = values.tolist()
    rows = []
    for i, member in enumerate(members):
        for epoch in sorted(by_epoch):
            point = by_epoch[epoch]
            rows.append(
                {
                    "weight_decay": member.weight_decay,
                    "seed": member.seed,
                    "epoch": epoch,
                    "step": point["step"],
                    "train_loss": point["train_loss"][i] if "train_loss" in point else None,
                    "val_loss": point["val_loss"][i] if "val_loss" in point else None,
                }
            )
    return rows


def _write_hparams(
    writers: list[RunWriter],
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

    for writer, member, module, row in zip(writers, members, modules, rows, strict=True):
        # The member's own optimizer, as its fit would build it: the ensemble's
        # groups hold every member at once and λ = 0 (applied per member).
        optimizer = module.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        report = module.param_groups_report.markdown(optimizer, steps_per_epoch_of(trainer))
        writer.add_summary(text("param_groups", report), 0)
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


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the summary's main columns.

    Example:
        >>> print(format_table([{"weight_decay": 3.0, "seed": 0, "status": "ok",
        ...     "train_loss": 1e-3, "val_loss": 0.1, "weight_norm": 0.39}]))
               λ  seed  status    train_loss   val_loss       ‖w‖      ‖w*‖   ‖w − w*‖   null ‖P⊥w‖
               3     0  ok             0.001        0.1      0.39         -          -            -
    """
    header = (
        f"{'λ':>8}  {'seed':>4}  {'status':<8}  {'train_loss':>10}  {'val_loss':>9}  "
        f"{'‖w‖':>8}  {'‖w*‖':>8}  {'‖w − w*‖':>9}  {'null ‖P⊥w‖':>11}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['weight_decay']:>8g}  {row['seed']:>4}  {row['status']:<8}  "
            f"{_fmt(row.get('train_loss')):>10}  {_fmt(row.get('val_loss')):>9}  "
            f"{_fmt(row.get('weight_norm')):>8}  {_fmt(row.get('ridge_weight_norm')):>8}  "
            f"{_fmt(row.get('distance_to_ridge')):>9}  {_fmt(row.get('null_space_norm')):>11}"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"
