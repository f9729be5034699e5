"""The book's figures, drawn from a sweep's tables: loss curves, held-out loss and ‖w‖ against λ.

Reads ``summary.csv``, ``curves.csv`` and (if present) ``ridge_curve.csv``
from a sweep's output folder and writes PNGs into its ``figures/`` folder.
Losses and norms span several orders of magnitude, so every loss and norm
axis is logarithmic (on a linear axis the book's effect is invisible), and λ
is drawn on a symmetric-log axis so that λ = 0 has a place on it.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wd_lightning.core.errors import InvalidArgumentError

__all__ = ["read_table", "write_figures"]

# Labelled λ ticks per axis: each label has two lines (λ and τ), and more than
# about eight overlap (a 100-λ sweep would also spend seconds measuring them).
_MOST_LABELLED_TICKS = 8
FIGURES = ("losses_vs_epoch.png", "val_loss_vs_weight_decay.png", "weight_norm_vs_weight_decay.png")


def read_table(
    path: str | Path, weight_decays: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """A CSV written by the sweep, with numbers as floats or ints and empty cells as ``None``.

    Args:
        path: ``summary.csv``, ``curves.csv`` or ``ridge_curve.csv`` of a sweep.
        weight_decays: keep only the rows of these λ (its ``weight_decay``
            column). The file is streamed and other rows are never parsed: a
            10,000-member sweep's ``curves.csv`` has a million rows, of which a
            figure draws a few hundred.
    """
    keep = None if weight_decays is None else {float(wd) for wd in weight_decays}
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        column = header.index("weight_decay") if keep is not None else -1
        kept: dict[str, bool] = {}  # each distinct λ cell, parsed once
        rows = []
        for cells in reader:
            if keep is not None:
                cell = cells[column]
                wanted = kept.get(cell)
                if wanted is None:
                    wanted = kept[cell] = _parse(cell) in keep
                if not wanted:
                    continue
            rows.append({key: _parse(value) for key, value in zip(header, cells, strict=True)})
        return rows


def _parse(value: str) -> Any:
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def write_figures(
    output_dir: str | Path, weight_decays_shown: Sequence[float] | None = None
) -> list[Path]:
    """Draw the sweep in ``output_dir`` into ``output_dir/figures/*.png``; returns the paths.

    Args:
        output_dir: a folder written by :func:`wd_lightning.sweep.run.run_sweep`.
        weight_decays_shown: the λ values whose loss curves are drawn; by
            default 0 and 3 (the article's pair) where swept, otherwise the
            smallest and largest λ that trained without diverging.
    """
    output_dir = Path(output_dir)
    tables = {name: output_dir / f"{name}.csv" for name in ("summary", "curves", "ridge_curve")}
    for name in ("summary", "curves"):
        if not tables[name].is_file():
            raise InvalidArgumentError(
                "output_dir", str(output_dir), f"a sweep's folder (it has no {name}.csv)"
            )
    # Figures made directly, not through pyplot: no backend is chosen or switched (a
    # notebook keeps its inline plots), no display is needed, and nothing is left open.
    from matplotlib.figure import Figure

    summary = read_table(tables["summary"])
    ridge = read_table(tables["ridge_curve"]) if tables["ridge_curve"].is_file() else []
    shown = _shown(summary, weight_decays_shown)
    curves = read_table(tables["curves"], weight_decays=shown)
    folder = output_dir / "figures"
    folder.mkdir(exist_ok=True)
    paths = [folder / name for name in FIGURES]
    figures = [
        _loss_curves(Figure, curves, shown),
        _against_weight_decay(Figure, summary, ridge, "val_loss", "held-out ½-loss"),
        _against_weight_decay(Figure, summary, ridge, "weight_norm", "‖w‖₂"),
    ]
    # The models' own validation metrics (val_accuracy, ...), one figure each.
    for column in _metric_columns(summary):
        paths.append(folder / f"{column}_vs_weight_decay.png")
        figures.append(_metric_against_weight_decay(Figure, summary, column))
    for figure, path in zip(figures, paths, strict=True):
        figure.savefig(path, dpi=110)
    return paths


def _metric_columns(summary: list[dict[str, Any]]) -> list[str]:
    columns = summary[0].keys() if summary else []
    return [c for c in columns if c.startswith("val_") and c != "val_loss"]


def _metric_against_weight_decay(
    figure_class: Any, summary: list[dict[str, Any]], column: str
) -> Any:
    """A validation metric and the held-out loss against λ, each λ's tick labelled with its τ."""
    figure = figure_class(figsize=(11.0, 4.2))
    axes = figure.subplots(1, 2)
    for axis, shown, label, log in (
        (axes[0], column, f"held-out {column.removeprefix('val_')}", False),
        (axes[1], "val_loss", "held-out loss (the training loss function)", True),
    ):
        _by_weight_decay(axis, summary, shown, log)
        axis.set_ylabel(label)
    figure.tight_layout()
    return figure


def _by_weight_decay(axis: Any, summary: list[dict[str, Any]], column: str, log: bool) -> None:
    by_wd: dict[float, list[float]] = defaultdict(list)
    timescales: dict[float, Any] = {}
    for row in summary:
        value = row.get(column)
        if row["status"] == "ok" and isinstance(value, (int, float)) and math.isfinite(value):
            by_wd[row["weight_decay"]].append(value)
            timescales[row["weight_decay"]] = row.get("timescale_steps")
    grid = sorted(by_wd)
    values = [value for wd in grid for value in by_wd[wd]]
    axis.scatter(
        [wd for wd in grid for _ in by_wd[wd]], values, s=12, alpha=0.35, label="each seed"
    )
    axis.plot(grid, [statistics.median(by_wd[wd]) for wd in grid], "o-", label="median")
    positive = [wd for wd in grid if wd > 0]
    axis.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ticks = _spread(grid, _MOST_LABELLED_TICKS)
    axis.set_xticks(ticks)
    axis.set_xticklabels([_tick(wd, timescales.get(wd)) for wd in ticks], fontsize=7)
    axis.minorticks_off()
    # Losses on a log axis, as in the other figures; a metric only if it spans decades.
    if values and min(values) > 0 and (log or max(values) > 10 * min(values)):
        axis.set_yscale("log")
    axis.set_xlabel("λ (weight decay), and τ = 1/(lr·λ) in optimizer steps")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8)


def _spread(grid: list[float], most: int) -> list[float]:
    """At most ``most`` values of ``grid``, evenly spread over it, first and last included."""
    if len(grid) <= most:
        return grid
    step = (len(grid) - 1) / (most - 1)
    return [grid[round(i * step)] for i in range(most)]


def _tick(weight_decay: float, timescale: Any) -> str:
    if not isinstance(timescale, (int, float)):
        return _three_digits(weight_decay)
    if math.isinf(timescale):
        shown = "∞"
    else:
        shown = f"{timescale:.3g}" if timescale < 1e3 else f"{timescale:,.0f}"
    return f"{_three_digits(weight_decay)}\nτ={shown}"


def _three_digits(value: float) -> str:
    """``0.0368`` for 0.036787…, ``1000`` for 1000 (not ``1e+03``)."""
    return f"{float(f'{value:.3g}'):g}"


def _shown(summary: list[dict[str, Any]], requested: Sequence[float] | None) -> list[float]:
    trained = sorted({row["weight_decay"] for row in summary if row["status"] == "ok"})
    if requested is not None:
        missing = [wd for wd in requested if wd not in trained]
        if missing:
            raise InvalidArgumentError(
                "weight_decays_shown", missing, f"λ values the sweep trained: {trained}"
            )
        return list(requested)
    if not trained:
        return []
    if 0.0 in trained and 3.0 in trained:
        return [0.0, 3.0]
    return sorted({trained[0], trained[-1]})


def _loss_curves(figure_class: Any, curves: list[dict[str, Any]], shown: list[float]) -> Any:
    columns = max(len(shown), 1)
    figure = figure_class(figsize=(4.6 * columns, 3.6))
    axes = figure.subplots(1, columns, squeeze=False)
    for axis, weight_decay in zip(axes[0], shown, strict=False):
        by_seed: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in curves:
            if row["weight_decay"] == weight_decay:
                by_seed[row["seed"]].append(row)
        for rank, (_, rows) in enumerate(sorted(by_seed.items())):
            # The first seed drawn boldly, like the book's single run; the others faintly.
            style = (
                {"alpha": 1.0, "linewidth": 1.6} if rank == 0 else {"alpha": 0.25, "linewidth": 0.8}
            )
            for column, colour, label in (
                ("train_loss", "tab:blue", "train"),
                ("val_loss", "tab:orange", "held-out"),
            ):
                points = [(r["epoch"] + 1, r[column]) for r in rows if _positive(r[column])]
                if points:
                    epochs, values = zip(*points, strict=True)
                    axis.plot(
                        epochs, values, color=colour, label=label if rank == 0 else None, **style
                    )
        axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel("½-loss")
        axis.set_title(f"λ = {weight_decay:g} ({len(by_seed)} seeds)")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def _against_weight_decay(
    figure_class: Any,
    summary: list[dict[str, Any]],
    ridge: list[dict[str, Any]],
    column: str,
    label: str,
) -> Any:
    figure = figure_class(figsize=(6.4, 4.2))
    axis = figure.subplots()
    by_wd: dict[float, list[float]] = defaultdict(list)
    diverged = sorted({row["weight_decay"] for row in summary if row["status"] != "ok"})
    for row in summary:
        if row["status"] == "ok" and _positive(row[column]):
            by_wd[row["weight_decay"]].append(row[column])
    grid = sorted(by_wd)
    seeds_x = [wd for wd in grid for _ in by_wd[wd]]
    seeds_y = [value for wd in grid for value in by_wd[wd]]
    axis.scatter(seeds_x, seeds_y, s=10, alpha=0.35, color="tab:blue", label="SGD, each seed")
    axis.plot(
        grid,
        [statistics.median(by_wd[wd]) for wd in grid],
        "o-",
        color="tab:blue",
        label="SGD after training, median",
    )
    ridge_column = f"ridge_{column}" if column != "weight_norm" else "ridge_weight_norm"
    ridge_points = [
        (r["weight_decay"], r[ridge_column]) for r in ridge if _positive(r[ridge_column])
    ]
    if ridge_points:
        xs, ys = zip(*ridge_points, strict=True)
        axis.plot(xs, ys, "--", color="black", label="closed-form ridge (converged)")
    # Where each run would converge; at λ = 0 that depends on its initial weights.
    limits = [
        (row["weight_decay"], row[ridge_column]) for row in summary if row["weight_decay"] == 0
    ]
    limits = [(wd, value) for wd, value in limits if _positive(value)]
    if limits:
        xs, ys = zip(*limits, strict=True)
        axis.scatter(xs, ys, marker="x", color="black", label="λ = 0 limit: interpolant nearest w₀")
    if column == "weight_norm":
        predicted: dict[float, list[float]] = defaultdict(list)
        for row in summary:
            if row["status"] == "ok" and _positive(row.get("predicted_null_space_norm")):
                predicted[row["weight_decay"]].append(row["predicted_null_space_norm"])
        # (1 − ηλ)^T underflows to 1e-60 and below for large λ: draw it only where
        # it is within the range of what was measured.
        floor = min(seeds_y, default=1e-12) / 10
        predicted = {wd: values for wd, values in predicted.items() if min(values) > floor}
        if predicted:
            xs = sorted(predicted)
            axis.plot(
                xs,
                [statistics.median(predicted[wd]) for wd in xs],
                ":",
                color="tab:green",
                linewidth=2,
                label="(1 − ηλ)^T·‖P⊥w₀‖: decayed initial weights",
            )
    for weight_decay in diverged:
        axis.axvline(weight_decay, color="tab:red", alpha=0.5, linestyle="-.")
    if diverged:
        axis.plot([], [], color="tab:red", linestyle="-.", label="diverged")
    positive = [wd for wd in grid + diverged if wd > 0]
    axis.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    axis.set_yscale("log")
    axis.set_xlabel("λ (weight decay)")
    axis.set_ylabel(label)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
