"""How much the Lightning packaging costs on the article's run, as ratios to plain PyTorch.

Run it as::

    python benchmarks/bench_fit.py --repeats 11 --processes 5
    python benchmarks/bench_fit.py --repeats 11 --processes 0 --cpu-time    # shared machine

Two comparisons, each against baselines measured in the same invocation:

* in-process: ``Trainer.fit`` of the λ = 3 run exactly as ``python -m wd_lightning fit``
  builds it (TensorBoard logger, weight-norm monitor, validation metrics,
  checkpointing, progress bar), against

  - :mod:`plain_book_run` doing the same 400 steps, 100 validation passes,
    logging and checkpoints in a plain loop, and the same loop without them;
  - the like-for-like bare Lightning fit: the same module and data under a
    ``Trainer`` with Lightning's own ``TensorBoardLogger`` and the weight-norm
    monitor, so that the same scalars are written at the same cadence
    (``log_every_n_steps=4``), and no progress bar or checkpoint;

  warm, interleaved, medians of ``--repeats``. The CLI's path before its
  logging was made cheap (Lightning's ``TensorBoardLogger`` and
  ``TQDMProgressBar``) is timed too.
* whole process: ``python -m wd_lightning fit`` against ``python plain_book_run.py``,
  fresh processes, interleaved, medians of ``--processes``.

Prints Markdown tables for BENCHMARKS.md.
``--cpu-time`` times the in-process fits by this process's CPU time on one
torch thread, which other work on a shared machine disturbs far less than
wall time; ``--processes 0`` skips the whole-process comparison.
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
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import plain_book_run  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from wd_lightning import (  # noqa: E402
    LinearRegression,
    SyntheticRegressionDataModule,
    WeightNormMonitor,
)
from wd_lightning.cli import WeightDecayCLI  # noqa: E402

CONFIG = str(REPO / "configs" / "d2l_weight_decay.yaml")
LIKE_FOR_LIKE = "bare Lightning, like-for-like: TensorBoardLogger, monitor, no bar or checkpoint"


# The CLI's logging before it was made cheap: Lightning's own logger and bar.
LIGHTNING_LOGGING = [
    "--trainer.logger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "--trainer.logger.default_hp_metric",
    "false",
    "--trainer.callbacks",
    "lightning.pytorch.callbacks.TQDMProgressBar",
]


def lightning_fit(root: str, progress_bar: bool, *extra: str) -> Callable[[], None]:
    """Build the CLI's run without starting it; return the fit call to time."""
    args = ["--config", CONFIG, "--trainer.default_root_dir", root]
    args += ["--trainer.enable_progress_bar", str(progress_bar).lower()]
    if extra:
        args += [*extra, "--trainer.logger.save_dir", root]
    with contextlib.redirect_stderr(io.StringIO()):
        cli = WeightDecayCLI(args=args, run=False)

    def fit() -> None:
        # The progress bar's output is discarded, not its cost.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            cli.trainer.fit(cli.model, cli.datamodule)

    return fit


def bare_lightning_fit() -> Callable[[], None]:
    """The same module and data under a Trainer with nothing extra: Lightning's own floor."""
    seed_everything(0, verbose=False)
    model, data = LinearRegression(), SyntheticRegressionDataModule()
    trainer = Trainer(
        max_epochs=100,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    return lambda: trainer.fit(model, data)


def like_for_like_lightning_fit(root: str) -> Callable[[], None]:
    """Bare Lightning writing the same scalars at the same cadence, its own way."""
    seed_everything(0, verbose=False)
    model, data = LinearRegression(), SyntheticRegressionDataModule()
    trainer = Trainer(
        max_epochs=100,
        logger=TensorBoardLogger(root, default_hp_metric=False),
        callbacks=[WeightNormMonitor()],
        log_every_n_steps=4,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    return lambda: trainer.fit(model, data)


# Wall time by default; main() switches to CPU time with --cpu-time.
clock: Callable[[], float] = time.perf_counter


def time_call(make: Callable[[], Callable[[], None]]) -> float:
    call = make()
    start = clock()
    call()
    return clock() - start


def in_process(repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        cases: dict[str, Callable[[], Callable[[], None]]] = {
            "plain loop": lambda: lambda: plain_book_run.run(),
            "plain loop + the same logging and checkpoints": lambda: (
                lambda: plain_book_run.run(log_dir=tempfile.mkdtemp(dir=root))
            ),
            LIKE_FOR_LIKE: lambda: like_for_like_lightning_fit(root),
            "wd_lightning fit, CLI defaults": lambda: lightning_fit(root, progress_bar=True),
            "wd_lightning fit, no progress bar": lambda: lightning_fit(root, progress_bar=False),
            "wd_lightning fit with Lightning's TensorBoardLogger and TQDMProgressBar": lambda: (
                lightning_fit(root, True, *LIGHTNING_LOGGING)
            ),
            "bare Lightning: no logger, checkpoint, monitor or progress bar": bare_lightning_fit,
        }
        for make in cases.values():  # warm-up: imports, first kernels, lazy inits
            time_call(make)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):  # interleaved, so drift affects every case alike
            for name, make in cases.items():
                samples[name].append(time_call(make))
    return {name: statistics.median(values) for name, values in samples.items()}


def whole_process(processes: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    commands = {
        "python plain_book_run.py --tensorboard": [
            sys.executable,
            str(HERE / "plain_book_run.py"),
            "--tensorboard",
        ],
        "python -m wd_lightning fit": [
            sys.executable,
            "-m",
            "wd_lightning",
            "fit",
            "--config",
            CONFIG,
        ],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(processes):
        for name, command in commands.items():
            with tempfile.TemporaryDirectory() as cwd:
                start = time.perf_counter()
                subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )


def table(title: str, results: dict[str, float], baselines: dict[str, float]) -> str:
    """One row per run: its median and its ratio to each baseline (with that ratio's goal)."""
    goals = "; ".join(f"{name}: goal ≤ {goal}×" for name, goal in baselines.items())
    lines = [f"**{title}** (baselines, {goals})", ""]
    header = "| run | median time | " + " | ".join(f"vs {name}" for name in baselines) + " |"
    lines += [header, "|---|---|" + "---|" * len(baselines)]
    for name, seconds in results.items():
        ratios = " | ".join(f"{seconds / results[b]:.2f}×" for b in baselines)
        lines.append(f"| {name} | {seconds * 1000:.0f} ms | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true", help="in-process: CPU time, 1 thread")
    args = parser.parse_args()
    if args.cpu_time:
        global clock
        clock = time.process_time
        torch.set_num_threads(1)
    print(f"Machine: {machine()}\n")
    results = in_process(args.repeats)
    baselines = {"plain loop + the same logging and checkpoints": 3.0, LIKE_FOR_LIKE: 1.0}
    title = f"In-process fit, warm, medians of {args.repeats}"
    title += ", CPU time on one thread" if args.cpu_time else ""
    print(table(title, results, baselines))
    if not args.processes:  # --processes 0: the in-process comparison only
        return
    print()
    processes = whole_process(args.processes)
    baselines = {"python plain_book_run.py --tensorboard": 1.6}
    print(table(f"Whole process, medians of {args.processes}", processes, baselines))


if __name__ == "__main__":
    main()
