"""A resumed fit continues bit for bit, and the same seed and config give the same run.

"Bit for bit" is ``torch.equal`` on every weight and ``==`` on every logged
scalar. Each comparison has a control that changes one thing (the seed, the
loader, the random state) and must then differ, so a check that cannot fail
would show up here.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader

from tests.fits import REPO, SignalAt, quiet_trainer
from wd_lightning import RandomStateCheckpoint, SyntheticRegressionDataModule, WeightDecayModule
from wd_lightning.cli import WeightDecayCLI, main
from wd_lightning.core.errors import TrainingInterruptedError
from wd_lightning.training.data import already_batched
from wd_lightning.training.tensorboard import read_scalars

QUIET = ["--trainer.enable_progress_bar", "false"]
STEPS_PER_EPOCH = 4  # the book's 20 examples in batches of 5
NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"
# Subprocesses import this checkout's package, whatever else is installed.
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}


# ------------------------------------------------------------------ helpers
def fit_cli(root: Path, *args: str) -> WeightDecayCLI:
    """``wd-lightning fit`` in this process, with its logs and checkpoints under ``root``."""
    return WeightDecayCLI(args=["fit", "--trainer.default_root_dir", str(root), *QUIET, *args])


def run_dir(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}"


def last_checkpoint(root: Path, version: int) -> Path:
    return run_dir(root, version) / "checkpoints" / "last.ckpt"


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(first[name], second[name]) for name in first)


def assert_history_continues(full: dict, before: dict, after: dict, step: int) -> None:
    """``full``'s scalars are ``before``'s below ``step`` and ``after``'s from ``step`` on.

    ``before`` may end with points at ``step`` that ``full`` has no reason to
    log (the end-of-training weight norms and HPARAMS metrics of a shorter fit).
    """
    assert full.keys() == after.keys()
    for tag, series in full.items():
        assert [p for p in series if p[0] < step] == [p for p in before.get(tag, []) if p[0] < step]
        assert [p for p in series if p[0] >= step] == after[tag], tag


# ------------------------------------------------------- the CLI, 100 = 50 + 50
@pytest.mark.slow
def test_100_epochs_equal_50_then_resume_from_last_ckpt(tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert fit_cli(whole).trainer.global_step == 400  # the defaults: 100 epochs
    fit_cli(halves, "--trainer.max_epochs", "50")
    resumed = fit_cli(halves, "--ckpt_path", str(last_checkpoint(halves, 0)))
    assert resumed.trainer.global_step == 400
    assert_same_weights(weights(last_checkpoint(whole, 0)), weights(last_checkpoint(halves, 1)))
    full = read_scalars(run_dir(whole, 0))
    assert len(full["train/loss"]) == 100 and len(full["val/loss"]) == 100
    assert_history_continues(
        full, read_scalars(run_dir(halves, 0)), read_scalars(run_dir(halves, 1)), step=200
    )


# --------------------------------------------------------------- determinism
@pytest.mark.slow
def test_same_seed_and_config_give_the_same_run_in_process(tmp_path):
    for seed in ("0", "0", "1"):
        fit_cli(tmp_path, "--trainer.max_epochs", "5", "--seed_everything", seed)
    first, second, other_seed = (weights(last_checkpoint(tmp_path, v)) for v in range(3))
    assert_same_weights(first, second)
    assert read_scalars(run_dir(tmp_path, 0)) == read_scalars(run_dir(tmp_path, 1))
    # Control: another seed gives other initial weights, hence another run.
    assert not same_weights(first, other_seed)
    assert read_scalars(run_dir(tmp_path, 0)) != read_scalars(run_dir(tmp_path, 2))


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_run_in_two_processes(tmp_path):
    command = [sys.executable, "-m", "wd_lightning", "fit", "--trainer.max_epochs", "5", *QUIET]
    roots = [tmp_path / "first", tmp_path / "second"]
    # Started together: the two processes overlap, and share nothing but the files they read.
    processes = []
    for root in roots:
        root.mkdir()
        processes.append(
            subprocess.Popen(
                command,
                cwd=root,
                env=SUBPROCESS_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()
    first, second = (weights(last_checkpoint(root, 0)) for root in roots)
    assert_same_weights(first, second)
    assert read_scalars(run_dir(roots[0], 0)) == read_scalars(run_dir(roots[1], 0))
    # ... and the same as this process computes.
    here = tmp_path / "here"
    fit_cli(here, "--trainer.max_epochs", "5")
    assert_same_weights(first, weights(last_checkpoint(here, 0)))
    assert read_scalars(run_dir(here, 0)) == read_scalars(run_dir(roots[0], 0))


# ------------------------------------- resuming in the middle of an epoch (API)
def dropout_model() -> WeightDecayModule:
    """A model that draws random numbers while it trains, with optimizer state (momentum)."""
    net = nn.Sequential(nn.Linear(200, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    optimizer = lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # noqa: E731
    return WeightDecayModule(net, weight_decay=0.1, optimizer=optimizer)


class PlainLoaderData(SyntheticRegressionDataModule):
    """The same batches in the same order, from a DataLoader that cannot resume mid-epoch."""

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            collate_fn=already_batched,
            generator=loader.generator,
        )


def fit_api(root: Path, *callbacks, ckpt_path=None, data=SyntheticRegressionDataModule):
    """Two epochs (8 steps) of the dropout model; a SIGTERM ends the fit early."""
    seed_everything(0, verbose=False)
    model = dropout_model()
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_on_exception=True)
    trainer = quiet_trainer(
        max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint, *callbacks]
    )
    try:
        trainer.fit(model, data(), ckpt_path=ckpt_path)
    except SIGTERMException:
        assert 0 < trainer.global_step < 8
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def interrupted_and_resumed(root: Path, step: int, *callbacks, data=SyntheticRegressionDataModule):
    fit_api(root / "first", SignalAt(step), *callbacks, data=data)
    checkpoint = root / "first" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == step
    return fit_api(root / "second", *callbacks, ckpt_path=checkpoint, data=data)


@pytest.mark.slow
@pytest.mark.filterwarnings(f"error:{NOT_RESUMABLE}")  # Lightning sees a resumable loader
def test_a_fit_stopped_by_sigterm_after_any_step_resumes_exactly(tmp_path):
    uninterrupted = fit_api(tmp_path / "whole", RandomStateCheckpoint())
    # Step 4 ends an epoch; the others stop in the middle of one.
    for step in range(1, 8):
        resumed = interrupted_and_resumed(tmp_path / str(step), step, RandomStateCheckpoint())
        assert_same_weights(uninterrupted, resumed)


@pytest.mark.slow
def test_a_periodic_checkpoint_from_inside_an_epoch_resumes_exactly(tmp_path):
    # Written after a step, as the command line's time-based last.ckpt is.
    every_5 = ModelCheckpoint(tmp_path / "periodic", every_n_train_steps=5, save_top_k=-1)
    uninterrupted = fit_api(tmp_path / "whole", every_5, RandomStateCheckpoint())
    checkpoint = tmp_path / "periodic" / "epoch=1-step=5.ckpt"
    resumed = fit_api(tmp_path / "resumed", RandomStateCheckpoint(), ckpt_path=checkpoint)
    assert_same_weights(uninterrupted, resumed)


@pytest.mark.slow
def test_mid_epoch_resume_needs_the_resumable_loader_and_the_random_state(tmp_path):
    uninterrupted = fit_api(tmp_path / "whole", RandomStateCheckpoint())
    # A plain DataLoader restarts the epoch at its first batch.
    with pytest.warns(PossibleUserWarning, match=NOT_RESUMABLE):
        plain = interrupted_and_resumed(
            tmp_path / "plain", 5, RandomStateCheckpoint(), data=PlainLoaderData
        )
    assert not same_weights(uninterrupted, plain)
    # Without the random state the dropout masks after the resume are others.
    assert not same_weights(uninterrupted, interrupted_and_resumed(tmp_path / "no_rng", 5))
    # At an epoch's end, the order and the random state are all a resume needs.
    assert same_weights(
        uninterrupted,
        interrupted_and_resumed(
            tmp_path / "at_end", 4, RandomStateCheckpoint(), data=PlainLoaderData
        ),
    )


# ------------------------------------------------- signals through the CLI
SIGNAL_AT_6 = ["--trainer.callbacks", "tests.fits.SignalAt", "--trainer.callbacks.step", "6"]


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_cli_stops_after_the_step_it_was_signalled_at_and_resumes_exactly(
    tmp_path, capsys, signal_name, exit_code
):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    whole = tmp_path / "whole"
    fit_cli(whole, "--trainer.max_epochs", "3")
    stopped = tmp_path / "stopped"
    args = ["fit", "--trainer.default_root_dir", str(stopped), "--trainer.max_epochs", "3"]
    args += [*QUIET, *SIGNAL_AT_6, "--trainer.callbacks.signal_name", signal_name]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == exit_code
    checkpoint = last_checkpoint(stopped, 0)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"wd-lightning: fit interrupted by {signal_name} at step 6; "
        f"resume with --ckpt_path {checkpoint}"
    )
    # The process's own handlers are back.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    resumed = fit_cli(stopped, "--trainer.max_epochs", "3", "--ckpt_path", str(checkpoint))
    assert resumed.trainer.global_step == 12
    assert_same_weights(weights(last_checkpoint(whole, 0)), weights(last_checkpoint(stopped, 1)))
    assert_history_continues(
        read_scalars(run_dir(whole, 0)),
        read_scalars(run_dir(stopped, 0)),
        read_scalars(run_dir(stopped, 1)),
        step=6,
    )


def test_a_second_sigint_stops_at_once_and_still_names_a_checkpoint(tmp_path, capsys):
    args = ["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "3"]
    args += [*QUIET, *SIGNAL_AT_6, "--trainer.callbacks.signal_name", "SIGINT"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--trainer.callbacks.times", "2"])
    assert exited.value.code == 130
    message = capsys.readouterr().err.splitlines()[-1]
    assert message.startswith("wd-lightning: fit interrupted by SIGINT at step 6; resume with")
    assert last_checkpoint(tmp_path, 0).exists()
    # Lightning ignores further Ctrl+C while it shuts down; afterwards Ctrl+C works again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupted_error_without_a_fit_or_a_checkpoint():
    assert str(TrainingInterruptedError(signal.SIGINT, None, None)) == "interrupted by SIGINT"
    error = TrainingInterruptedError(signal.SIGTERM, 8, None)
    assert str(error) == "fit interrupted by SIGTERM at step 8; no checkpoint was saved"
    assert error.exit_code == 143


# ------------------------------------------ real signals at an arbitrary step
def wait_until_training_is_logged(run: Path, process: subprocess.Popen) -> None:
    """Return once the run's event file holds training losses (the fit is under way)."""
    deadline = time.monotonic() + 300  # only a guard against a hang
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended early: {process.communicate()[1]}")
        if run.exists() and "train/loss" in read_scalars(run):
            return
        time.sleep(0.2)
    pytest.fail("the run logged no training loss")


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_killed_cli_run_leaves_readable_logs_and_a_checkpoint_that_resumes_exactly(
    tmp_path, signal_name, exit_code
):
    read_scalars(tmp_path)  # load TensorBoard's reader now, not while the run goes on
    command = [sys.executable, "-m", "wd_lightning", "fit", "--trainer.max_epochs", "100000"]
    process = subprocess.Popen(
        [*command, *QUIET],
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_training_is_logged(run_dir(tmp_path, 0), process)
        process.send_signal(getattr(signal, signal_name))
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, err
    assert "Traceback" not in err
    expected = rf"wd-lightning: fit interrupted by {signal_name} at step (\d+); resume with "
    match = re.fullmatch(expected + r"--ckpt_path (.+)", err.splitlines()[-1])
    assert match, err
    step, checkpoint = int(match[1]), Path(match[2])
    assert checkpoint == last_checkpoint(tmp_path, 0)
    assert torch.load(checkpoint, weights_only=True)["global_step"] == step
    before = read_scalars(run_dir(tmp_path, 0))
    # Losses are logged at steps 3, 7, 11, ...: everything up to the stop was written.
    assert step - STEPS_PER_EPOCH <= before["train/loss"][-1][0] < step

    epochs = step // STEPS_PER_EPOCH + 2
    resumed = fit_cli(tmp_path, "--trainer.max_epochs", str(epochs), "--ckpt_path", str(checkpoint))
    assert resumed.trainer.global_step == epochs * STEPS_PER_EPOCH
    after = read_scalars(run_dir(tmp_path, 1))
    assert after["train/loss"][0][0] == before["train/loss"][-1][0] + STEPS_PER_EPOCH

    whole = tmp_path / "whole"
    fit_cli(whole, "--trainer.max_epochs", str(epochs))
    assert_same_weights(weights(last_checkpoint(whole, 0)), weights(last_checkpoint(tmp_path, 1)))
    assert_history_continues(read_scalars(run_dir(whole, 0)), before, after, step)
