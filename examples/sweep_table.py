"""A sweep's summary per λ, as the Markdown table in docs/digits.md.

    python -m wd_lightning sweep --config configs/digits_sweep.yaml
    python examples/sweep_table.py sweeps/digits

prints, for every λ, the median [min, max] over seeds of the held-out accuracy
and loss, the final training loss, the decay timescale τ = 1/(lr·λ) (in
optimizer steps and in epochs) and the factor ∏(1 − lr·λ) left of the initial
weights: the columns ``val_accuracy``, ``val_loss``, ``train_loss``,
``timescale_steps`` and ``init_remaining`` of the sweep's ``summary.csv``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from wd_lightning.sweep.plots import read_table


def _spread(values: list[float], digits: int) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}, {max(values):.{digits}f}]"
    )


def _count(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.3g}" if value < 1e3 else f"{value:,.0f}"


def sweep_table(output_dir: str | Path, steps_per_epoch: int) -> str:
    """The Markdown table of the sweep in ``output_dir``, one row per λ."""
    rows = read_table(Path(output_dir) / "summary.csv")
    by_weight_decay: dict[float, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok":
            by_weight_decay[row["weight_decay"]].append(row)
    lines = [
        "| λ | τ (steps) | τ (epochs) | initial weights left | held-out accuracy "
        "| held-out loss | training loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for weight_decay, members in sorted(by_weight_decay.items()):
        timescale = members[0]["timescale_steps"]
        left = members[0]["init_remaining"]
        lines.append(
            f"| {weight_decay:g} | {_count(timescale)} | {_count(timescale / steps_per_epoch)} "
            f"| {left:.3g} | {_spread([m['val_accuracy'] for m in members], 3)} "
            f"| {_spread([m['val_loss'] for m in members], 3)} "
            f"| {statistics.median(m['train_loss'] for m in members):.2g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a sweep's folder, e.g. sweeps/digits")
    parser.add_argument("--steps_per_epoch", type=int, default=4, help="for τ in epochs")
    args = parser.parse_args()
    print(sweep_table(args.output_dir, args.steps_per_epoch))


if __name__ == "__main__":
    main()
