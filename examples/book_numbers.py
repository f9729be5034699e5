"""The article's two runs measured: the numbers the configs' comments and the docs quote.

    python examples/book_numbers.py

runs ``fit --config d2l_no_decay`` and ``fit --config d2l_weight_decay`` for
seeds 0 to 4 (``--seed_everything S --data.data_seed S``) and prints, for
each config, the line its comment quotes (seed 0, the config as shipped) and
the Markdown table of the five seeds. The tests check that the configs and
docs/book.md show exactly what this prints.
"""

from __future__ import annotations

import contextlib
import io
import statistics
from dataclasses import dataclass

from wd_lightning.cli import WeightDecayCLI

CONFIGS = ("d2l_no_decay", "d2l_weight_decay")
SEEDS = (0, 1, 2, 3, 4)
_QUIET = [
    "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@dataclass(frozen=True)
class BookRun:
    """The final figures of one run."""

    weight_decay: float
    weight_norm: float  # weight_norm/decay: ‖w‖ without the bias
    train_loss: float
    val_loss: float  # the held-out ½-squared error, without the penalty


def measure(config: str, seed: int) -> BookRun:
    """Run ``fit --config <config>`` with both seeds set to ``seed``, in this process."""
    args = ["fit", "--config", config, "--seed_everything", str(seed)]
    with contextlib.redirect_stdout(io.StringIO()):  # the fit's own summary
        cli = WeightDecayCLI(args=[*args, "--data.data_seed", str(seed), *_QUIET])
    metrics = cli.trainer.callback_metrics
    return BookRun(
        weight_decay=cli.model.weight_decay,
        weight_norm=float(cli.model.model.weight.norm()),
        train_loss=float(metrics["train/loss"]),
        val_loss=float(metrics["val/loss"]),
    )


def comment_line(run: BookRun) -> str:
    """What a config's comment says its seed-0 run ends at."""
    return (
        f"# Seed 0 ends at ‖w‖ = {run.weight_norm:.3g} (weight_norm/decay), a training "
        f"½-loss of {run.train_loss:.2g} and a held-out ½-loss of {run.val_loss:.3g}."
    )


def table(runs: dict[str, list[BookRun]]) -> str:
    """The five-seed Markdown table, median [min, max] of ‖w‖ and of the held-out ½-loss."""

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]"

    lines = [
        "| config | λ | ‖w‖ median [min, max] | held-out ½-loss median [min, max] |",
        "|---|---|---|---|",
    ]
    for config, config_runs in runs.items():
        norms = [run.weight_norm for run in config_runs]
        losses = [run.val_loss for run in config_runs]
        lines.append(
            f"| `{config}` | {config_runs[0].weight_decay:g} | {spread(norms)} | {spread(losses)} |"
        )
    return "\n".join(lines)


def ratio(runs: dict[str, list[BookRun]]) -> str:
    """How many times lower the held-out loss is with decay, median to median."""
    without, with_decay = (statistics.median(r.val_loss for r in runs[c]) for c in CONFIGS)
    return f"{without / with_decay:.0f}"


def measure_all() -> dict[str, list[BookRun]]:
    return {config: [measure(config, seed) for seed in SEEDS] for config in CONFIGS}


if __name__ == "__main__":
    runs = measure_all()
    for config in CONFIGS:
        print(f"{config}.yaml:\n{comment_line(runs[config][0])}\n")
    print(table(runs))
    print(f"\nheld-out ½-loss without / with decay (medians): {ratio(runs)}")
