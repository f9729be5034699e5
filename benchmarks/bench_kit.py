"""How long the weight-decay kit takes: a passing check, and an identification.

Each figure is the median of ``--repeats`` runs after one warm-up run (the first call into
torch and Hypothesis is slower), with the kit's defaults (30 examples for a check, 20 for an
identification).

Usage::

    python benchmarks/bench_kit.py             # about a minute on 2 cores
    python benchmarks/bench_kit.py --repeats 1

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from wd_lightning.testing import check_weight_decay, identify_weight_decay

CASES: list[tuple[str, Callable[[], object]]] = [
    (
        "check SGD (momentum) as coupled",
        lambda: check_weight_decay(torch.optim.SGD, "coupled", optimizer_kwargs={"momentum": 0.9}),
    ),
    ("check Adam as coupled", lambda: check_weight_decay(torch.optim.Adam, "coupled")),
    ("check AdamW as decoupled", lambda: check_weight_decay(torch.optim.AdamW, "decoupled")),
    ("identify AdamW", lambda: identify_weight_decay(torch.optim.AdamW)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case")
    args = parser.parse_args()
    print("| what | median seconds |")
    print("|---|---|")
    for name, run in CASES:
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
