"""What makes sweeps scale: cheap member construction, streamed curves, several processes."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import seed_everything

from tests.fits import REPO
from wd_lightning import LinearRegression, SyntheticRegressionDataModule
from wd_lightning.sweep.plots import read_table
from wd_lightning.sweep.run import run_sweep
from wd_lightning.training.tensorboard import read_scalars

TRAINER = {"max_epochs": 3, "enable_progress_bar": False}


def _counting(builder):
    calls = []

    def build(weight_decay):
        calls.append(weight_decay)
        return builder(weight_decay)

    return build, calls


def _initial_norm(weight_decay, seed, builder):
    seed_everything(seed, verbose=False)
    return float(builder(weight_decay).model.weight.detach().norm())


def test_members_are_built_once_per_seed_and_once_per_weight_decay(tmp_path):
    def builder(wd):
        return LinearRegression(weight_decay=wd)

    build, calls = _counting(builder)
    weight_decays, seeds = [0.0, 1.0, 3.0, 10.0], [0, 1, 2]
    result = run_sweep(
        build, SyntheticRegressionDataModule(), weight_decays, seeds, tmp_path, TRAINER
    )
    assert len(calls) == len(seeds) + len(weight_decays)  # not one per member
    for row in result.rows:
        expected = _initial_norm(row["weight_decay"], row["seed"], builder)
        assert row["initial_weight_norm"] == pytest.approx(expected, rel=1e-6)


def test_a_builder_whose_draws_depend_on_lambda_gets_every_member_built(tmp_path):
    def builder(wd):
        torch.rand(int(wd))  # draws that depend on λ shift the initial weights
        return LinearRegression(weight_decay=wd)

    build, calls = _counting(builder)
    weight_decays, seeds = [0.0, 2.0], [0, 1]
    result = run_sweep(
        build, SyntheticRegressionDataModule(), weight_decays, seeds, tmp_path, TRAINER
    )
    assert len(calls) == len(seeds) + len(weight_decays) + len(weight_decays) * len(seeds)
    for row in result.rows:
        expected = _initial_norm(row["weight_decay"], row["seed"], builder)
        assert row["initial_weight_norm"] == pytest.approx(expected, rel=1e-6)


def test_curves_are_written_epoch_by_epoch_with_the_logged_values(tmp_path):
    weight_decays, seeds = [0.0, 3.0], [0, 1, 2]
    run_sweep(
        lambda wd: LinearRegression(weight_decay=wd),
        SyntheticRegressionDataModule(),
        weight_decays,
        seeds,
        tmp_path,
        TRAINER,
    )
    rows = read_table(tmp_path / "curves.csv")
    members = [(wd, seed) for wd in weight_decays for seed in seeds]
    # All members of epoch 0, then of epoch 1, ...: written as the epochs end.
    assert [(r["epoch"], (r["weight_decay"], r["seed"])) for r in rows] == [
        (epoch, member) for epoch in range(3) for member in members
    ]
    for wd, seed in members:
        logged = read_scalars(tmp_path / "runs" / f"wd={wd:g}_seed={seed}")["val/loss"]
        curve = [
            (r["step"], r["val_loss"]) for r in rows if (r["weight_decay"], r["seed"]) == (wd, seed)
        ]
        # The row's step is the epoch's last (that of its mean training loss).
        assert [value for _, value in curve] == pytest.approx([v for _, v in logged], rel=1e-6)


def _cli_sweep(folder, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "wd_lightning", "sweep"]
    command += ["--weight_decays", "[0, 3, 1000]", "--seeds", "[0, 1]"]
    # 40 epochs: long enough for λ = 1000 (lr·λ = 3) to overflow and be marked diverged.
    command += ["--trainer.max_epochs", "40", "--output_dir", "sweep", "--plot", "false"]
    command += ["--trainer.enable_progress_bar", "false", *extra]
    folder.mkdir()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "sweep", done.stdout


@pytest.mark.slow
def test_two_processes_give_the_one_process_sweep(tmp_path):
    one, _ = _cli_sweep(tmp_path / "one")
    two, printed = _cli_sweep(
        tmp_path / "two",
        *["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"],
    )
    # The summary is printed once, by rank zero.
    assert printed.count("summary: sweep/summary.csv") == 1
    for table in ("summary.csv", "curves.csv", "ridge_curve.csv"):
        assert (two / table).read_text() == (one / table).read_text(), table
    assert not list(two.glob("curves.csv.rank*"))
    runs = sorted(path.name for path in (one / "runs").iterdir())
    assert sorted(path.name for path in (two / "runs").iterdir()) == runs
    assert len(runs) == 6
    for run in runs:
        assert read_scalars(two / "runs" / run) == read_scalars(one / "runs" / run), run
    with (one / "summary.csv").open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses.count("diverged") == 2  # λ = 1000 diverges in both, on its own
