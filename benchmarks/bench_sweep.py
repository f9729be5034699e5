"""What a whole λ × seed sweep costs, as ratios to one fit of the article's run.

Run it as::

    python benchmarks/bench_sweep.py --processes 5                  # the 65-run sweep
    python benchmarks/bench_sweep.py --scaling --repeats 3          # growth with members
    python benchmarks/bench_sweep.py --split 1000 --repeats 3       # 1 process against 2

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

With ``--scaling``: how the cost grows with the number of members, each
sweep a fresh ``python -m wd_lightning sweep`` process (summary, analysis
and figures included), interleaved with fresh ``fit`` processes of the book
run (the baseline): 1, 10, 100, 1000 and 10,000 members of the book run
(``--book``), 1, 10 and 100 of ``configs/mlp_classifier.yaml`` through the
``torch.func.vmap`` path (``--mlp``). For each: the median wall time and its
ratio to one fit, the peak memory (resident set) against the members'
parameters, and where the time went (building members, training, event
files, curves, summary and analysis, figures), from a process that times its
own phases.

With ``--split MEMBERS``: the same book-run sweep in one process and split
across two CPU processes (``--trainer.devices 2 --trainer.accelerator cpu
--trainer.strategy ddp``), fresh processes, interleaved; the two must write
the same tables (checked), and the ratio says what the second process buys
(on a machine with at least two free cores).

Prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_STARTED = time.perf_counter()  # the start-up phase of a timed sweep: imports onwards

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench_fit import machine  # noqa: E402  (this folder is on the path when run)

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


# ----------------------------------------------------------------- scaling
BOOK_GRIDS = {1: (1, 1), 10: (5, 2), 100: (10, 10), 1000: (50, 20), 10000: (100, 100)}
MLP_GRIDS = {1: (1, 1), 10: (5, 2), 100: (10, 10)}
MLP_CONFIG = REPO / "configs" / "mlp_classifier.yaml"
PHASES = ("start-up", "members", "training", "events", "curves", "summary", "figures")


def _grid(members: int, config: str) -> tuple[list[float], list[int]]:
    lambdas, seeds = (BOOK_GRIDS if config == "book" else MLP_GRIDS)[members]
    # λ from 0 to 100 (the book's range where SGD at lr 0.003 converges).
    weight_decays = [0.0] + [
        round(10 ** (-2 + 4 * i / max(lambdas - 1, 1)), 6) for i in range(1, lambdas)
    ]
    return weight_decays[:lambdas], list(range(seeds))


def _sweep_args(members: int, config: str, output_dir: str) -> list[str]:
    weight_decays, seeds = _grid(members, config)
    base = ["--config", str(SWEEP_CONFIG)] if config == "book" else ["--config", str(MLP_CONFIG)]
    return [
        "sweep", *base,
        "--weight_decays", str(weight_decays), "--seeds", str(seeds),
        "--output_dir", output_dir, "--overwrite", "true",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def timed_sweep(members: int, config: str, output_dir: str) -> dict[str, float]:
    """Run one sweep in this process, timing its phases; what ``--one`` prints as JSON."""
    import resource

    from wd_lightning.sweep import plots, run
    from wd_lightning.training import scalar_runs

    spent = dict.fromkeys(PHASES, 0.0)
    spent["start-up"] = time.perf_counter() - _STARTED

    def timing(owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                # A timer thread's flush overlaps the training: it is counted there.
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start

        setattr(owner, name, timed)

    timing(run, "_build_members", "members")
    for name in ("add_table", "add_event", "_flush"):
        timing(scalar_runs.ScalarRuns, name, "events")
    timing(run.CurveStream, "_write", "curves")
    timing(run, "_merge_curve_parts", "curves")
    for name in ("_summary_rows", "_add_linear_analysis", "_write_csv", "_ridge_curve"):
        timing(run, name, "summary")
    timing(plots, "write_figures", "figures")
    fit = Trainer.fit

    def timed_fit(self, *args, **kwargs):
        start = time.perf_counter()
        # Events and curves written during training count as themselves, not as training
        # (events written after it, the HParams summaries and the last flush, count too).
        written = spent["events"] + spent["curves"]
        try:
            return fit(self, *args, **kwargs)
        finally:
            during = spent["events"] + spent["curves"] - written
            spent["training"] += time.perf_counter() - start - during

    Trainer.fit = timed_fit
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        main(_sweep_args(members, config, output_dir))
    spent["sweep"] = time.perf_counter() - start
    spent["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spent["parameters_mb"] = _parameter_bytes(config) * members / 2**20
    return spent


def scaling(configs: list[str], repeats: int, sizes: dict[str, list[int]]) -> None:
    fits: list[float] = []
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            fits.append(_process(["fit", "--config", str(FIT_CONFIG)], folder))
            for config in configs:
                for members in sizes[config]:
                    command = [sys.executable, str(Path(__file__).resolve()), "--one"]
                    command += [str(members), config, f"{folder}/{config}{members}"]
                    start = time.perf_counter()
                    done = subprocess.run(
                        command, check=True, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)},
                    )  # fmt: skip
                    phases = json.loads(done.stdout.strip().splitlines()[-1])
                    phases["wall"] = time.perf_counter() - start
                    results.setdefault((config, members), []).append(phases)
                    # Each measurement as it comes: a long run keeps what it measured.
                    measured = f"measured: fit {fits[-1]:.2f} s; {config} {members}: {phases}"
                    print(measured, flush=True)
    fit = statistics.median(fits)
    print(f"**Machine:** {machine()}\n")
    print(f"Baseline: `fit --config configs/d2l_weight_decay.yaml`, median {fit:.2f} s "
          f"({repeats} fresh processes, interleaved with the sweeps).\n")  # fmt: skip
    header = "| config | members | wall (median) | vs one fit | peak RSS | members' parameters | "
    header += " | ".join(PHASES) + " | rest |"
    print(header)
    print("|---" * (7 + len(PHASES)) + "|")
    for (config, members), samples in results.items():
        median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        parameters = median["parameters_mb"]
        phases = " | ".join(f"{median[phase]:.2f} s" for phase in PHASES)
        # What no phase covers: process start and exit, HParams summaries, the trainer.
        phases += f" | {median['wall'] - sum(median[phase] for phase in PHASES):.2f} s"
        print(
            f"| {config} | {members:,} | {median['wall']:.2f} s | {median['wall'] / fit:.2f}× | "
            f"{median['peak_rss_mb']:.0f} MB | {parameters:.2f} MB | {phases} |"
        )


def split(members: int, repeats: int) -> None:
    """One process against two for the same sweep; the tables must match."""
    two = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]
    times: dict[str, list[float]] = {"1 process": [], "2 processes": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for name, extra in (("1 process", []), ("2 processes", two)):
                args = [*_sweep_args(members, "book", name.replace(" ", "_")), *extra]
                times[name].append(_process(args, folder))
        for table in ("summary.csv", "curves.csv"):
            one = (Path(folder) / "1_process" / table).read_text()
            if (Path(folder) / "2_processes" / table).read_text() != one:
                raise SystemExit(f"{table} differs between 1 and 2 processes")
    base = statistics.median(times["1 process"])
    print(f"**Machine:** {machine()}\n")
    print(f"Book-run sweep of {members:,} members, {repeats} fresh processes each, interleaved; ")
    print("summary.csv and curves.csv identical.\n")
    print("| run | median wall | ratio |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.2f} s | {median / base:.2f}× |")


def _parameter_bytes(config: str) -> int:
    from wd_lightning import MLP

    if config == "book":
        return (200 + 1) * 4
    model = MLP(in_features=20, hidden_features=[64, 64], out_features=3, norm="batch")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--scaling", action="store_true", help="growth with members")
    parser.add_argument("--repeats", type=int, default=3, help="--scaling: processes per size")
    parser.add_argument("--book", type=int, nargs="*", default=list(BOOK_GRIDS))
    parser.add_argument("--mlp", type=int, nargs="*", default=list(MLP_GRIDS))
    parser.add_argument("--split", type=int, help="members of a 1- against 2-process sweep")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # MEMBERS CONFIG OUTPUT_DIR
    args = parser.parse_args()
    if args.one:
        members, config, output_dir = args.one
        print(json.dumps(timed_sweep(int(members), config, output_dir)))
        return
    if args.split:
        split(args.split, args.repeats)
        return
    if args.scaling:
        configs = [name for name in ("book", "mlp") if getattr(args, name)]
        scaling(configs, args.repeats, {"book": args.book, "mlp": args.mlp})
        return
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
