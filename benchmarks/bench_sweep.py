"""What a whole λ × seed sweep costs, as ratios to one fit of the article's run.

Three comparisons, each against a baseline measured in the same invocation:

* whole process: ``python -m wd_lightning sweep --config configs/sweep.yaml``
  (65 members, summary, closed-form analysis and figures included) against
  ``python -m wd_lightning fit --config configs/d2l_weight_decay.yaml``, fresh
  processes, interleaved, medians of ``--processes``. Goal: ≤ 2×.
* sequential processes: what running the 65 fits one after another as separate
  commands costs, i.e. 65 × the median fit process (derived, not rerun).
* sequential in one process: the 65 members fitted one after another through
  the Python API with the CLI's logging (``WeightDecayCLI(..., run=False)``),
  against the vectorised sweep of the same members in the same process.

Usage: ``python benchmarks/bench_sweep.py [--processes 5]``; prints a Markdown
table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from wd_lightning.cli import WeightDecayCLI, main  # noqa: E402
from wd_lightning.core.errors import TrainingDivergedError  # noqa: E402

FIT_CONFIG = REPO / "configs" / "d2l_weight_decay.yaml"
SWEEP_CONFIG = REPO / "configs" / "sweep.yaml"


def _process(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "wd_lightning", *args],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return time.perf_counter() - start


def whole_processes(repeats: int) -> tuple[list[float], list[float]]:
    fits, sweeps = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            fits.append(_process(["fit", "--config", str(FIT_CONFIG)], folder))
            sweeps.append(
                _process(["sweep", "--config", str(SWEEP_CONFIG), "--output_dir", "s"], folder)
            )
    return fits, sweeps


def _grid() -> tuple[list[float], list[int]]:
    config = yaml.safe_load(SWEEP_CONFIG.read_text())
    return config["weight_decays"], config["seeds"]


def in_process() -> tuple[float, float, int]:
    """Seconds for the 65 fits one after another, and for the sweep, in this process."""
    weight_decays, seeds = _grid()
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory() as folder, quiet[0], quiet[1]:
        # Warm both paths once so that neither pays first-call costs.
        main(["sweep", "--config", str(SWEEP_CONFIG), "--output_dir", f"{folder}/warm"])
        start = time.perf_counter()
        main(["sweep", "--config", str(SWEEP_CONFIG), "--output_dir", f"{folder}/sweep"])
        sweep = time.perf_counter() - start
        start = time.perf_counter()
        for weight_decay in weight_decays:
            for seed in seeds:
                root = f"{folder}/fit_{weight_decay}_{seed}"
                args = ["fit", "--config", str(FIT_CONFIG), "--trainer.default_root_dir", root]
                args += ["--model.weight_decay", str(weight_decay), "--seed_everything", str(seed)]
                args += ["--trainer.enable_progress_bar", "false"]
                # λ = 1000 diverges, as it does in the sweep.
                with contextlib.suppress(TrainingDivergedError):
                    WeightDecayCLI(args=args)
        sequential = time.perf_counter() - start
    return sequential, sweep, len(weight_decays) * len(seeds)


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    args = parser.parse_args()
    fits, sweeps = whole_processes(args.processes)
    fit, sweep = statistics.median(fits), statistics.median(sweeps)
    sequential, sweep_warm, members = in_process()
    cpu = platform.processor() or platform.machine()
    print(f"**Machine:** {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, ")
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}\n")
    print(f"**Whole process** (baseline: one fit; goal: sweep ≤ 2.0×; {args.processes} each)\n")
    print("| run | median time | ratio |\n|---|---|---|")
    print(f"| `fit --config configs/d2l_weight_decay.yaml` (1 run) | {fit:.2f} s | 1.00× |")
    print(f"| `sweep --config configs/sweep.yaml` ({members} runs) | {sweep:.2f} s "
          f"| {sweep / fit:.2f}× |")  # fmt: skip
    print(f"| {members} separate `fit` processes (derived) | {members * fit:.0f} s "
          f"| {members:.0f}× |\n")  # fmt: skip
    print(f"**In one process, warm** (baseline: the {members} fits one after another)\n")
    print("| run | time | ratio |\n|---|---|---|")
    print(f"| {members} fits, one after another | {sequential:.1f} s | 1.00× |")
    ratio = sweep_warm / sequential
    print(f"| the same {members} runs as one sweep | {sweep_warm:.2f} s | {ratio:.3f}× |")


if __name__ == "__main__":
    main_()
