"""The cheap logging path writes what Lightning's writes, and loses at most the flush interval."""

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from tests.fits import CONFIGS, REPO
from wd_lightning.cli import WeightDecayCLI
from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.training.logging import (
    BufferedTensorBoardLogger,
    FlushLoggersAtEpochEnd,
    TimedProgressBar,
)
from wd_lightning.training.rundir import ClaimingTensorBoardLogger
from wd_lightning.training.tensorboard import EventFile, read_scalars


def _events(run: Path) -> list[tuple]:
    """Every event of a run's event files, in file order, without its wall time."""
    events = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            event.ClearField("wall_time")
            if event.HasField("summary"):
                for value in event.summary.value:
                    events.append((event.step, value.tag, value.SerializeToString()))
            elif not event.file_version:
                events.append((event.step, event.WhichOneof("what"), event.SerializeToString()))
    return events


def _fit(root: Path, *extra: str) -> WeightDecayCLI:
    args = ["--config", str(CONFIGS / "d2l_weight_decay.yaml"), "--trainer.max_epochs", "6"]
    args += ["--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]
    cli = WeightDecayCLI(args=[*args, *extra], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


@pytest.mark.slow
def test_the_cli_writes_the_same_events_as_the_tensorboard_logger_it_replaces(tmp_path):
    ours = _fit(tmp_path / "ours")
    assert isinstance(ours.trainer.logger, BufferedTensorBoardLogger)
    # The CLI's logger before: Lightning's TensorBoardLogger, claiming its folder
    # and leaving out the epoch scalar.
    lightnings = _fit(
        tmp_path / "lightning",
        "--trainer.logger",
        "wd_lightning.training.rundir.ClaimingTensorBoardLogger",
        "--trainer.logger.save_dir",
        str(tmp_path / "lightning"),
        "--trainer.logger.default_hp_metric",
        "false",
    )
    assert type(lightnings.trainer.logger) is ClaimingTensorBoardLogger
    expected = _events(Path(lightnings.trainer.log_dir))
    written = _events(Path(ours.trainer.log_dir))
    # Same tags, steps, values and order: scalars, the text report, layout and hparams.
    assert written == expected
    assert {tag for _, tag, _ in written} >= {"train/loss", "val/loss", "weight_norm/total"}
    hparams = Path(ours.trainer.log_dir) / "hparams.yaml"
    assert hparams.read_text() == (Path(lightnings.trainer.log_dir) / "hparams.yaml").read_text()


def test_hparams_file_is_written_once(tmp_path):
    logger = BufferedTensorBoardLogger(tmp_path)
    logger.log_hyperparams({"weight_decay": 3.0})
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.save()
    hparams = Path(logger.log_dir) / "hparams.yaml"
    assert hparams.read_text() == "weight_decay: 3.0\n"
    hparams.unlink()
    logger.save()  # no file-system check after the first write
    assert not hparams.exists()
    logger.finalize("success")


def test_epoch_end_callback_flushes_the_buffered_events(tmp_path):
    logger = BufferedTensorBoardLogger(tmp_path, flush_seconds=3600)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    assert read_scalars(logger.log_dir) == {}  # still in the file's buffer

    trainer = types.SimpleNamespace(loggers=[logger])
    FlushLoggersAtEpochEnd().on_train_epoch_end(trainer, None)
    assert read_scalars(logger.log_dir) == {"train/loss": [(0, 1.0)]}
    logger.finalize("success")


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "2"])
def test_flush_seconds_must_be_a_positive_time(tmp_path, value):
    with pytest.raises(InvalidArgumentError, match="flush_seconds"):
        BufferedTensorBoardLogger(tmp_path, flush_seconds=value)
    with pytest.raises(InvalidArgumentError, match="flush_seconds"):
        EventFile(tmp_path, flush_seconds=value)
    with pytest.raises(InvalidArgumentError, match="refresh_seconds"):
        TimedProgressBar(refresh_seconds=value)


_KILLED_WRITER = """
import sys, time
from wd_lightning.training.logging import BufferedTensorBoardLogger
logger = BufferedTensorBoardLogger(sys.argv[1], flush_seconds=float(sys.argv[2]), version=0)
for step in range(10):
    logger.log_metrics({"train/loss": float(step)}, step=step)
print("logged", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_process_loses_at_most_the_flush_interval(tmp_path):
    flush_seconds = 0.5
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(flush_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == "logged"
        # The events sit in the file's buffer; nothing flushes them but the timer.
        time.sleep(flush_seconds * 4)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    run = tmp_path / "lightning_logs" / "version_0"
    assert read_scalars(run) == {"train/loss": [(step, float(step)) for step in range(10)]}


def test_event_file_reopens_into_a_new_file(tmp_path):
    from tensorboard.compat.proto.event_pb2 import Event

    events = EventFile(tmp_path)
    events.close()
    events.reopen()
    events.add_event(Event(step=1))
    events.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_cli_defaults_use_the_cheap_logger_and_bar(tmp_path):
    args = ["--trainer.default_root_dir", str(tmp_path)]
    cli = WeightDecayCLI(args=args, run=False)
    assert isinstance(cli.trainer.logger, BufferedTensorBoardLogger)
    assert isinstance(cli.trainer.progress_bar_callback, TimedProgressBar)
    assert any(isinstance(c, FlushLoggersAtEpochEnd) for c in cli.trainer.callbacks)
    chosen = ["--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"]
    cli = WeightDecayCLI(args=[*args, *chosen], run=False)
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar
    cli = WeightDecayCLI(args=[*args, "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.trainer.progress_bar_callback is None


@pytest.mark.slow
def test_timed_progress_bar_ends_showing_the_last_epoch_and_metrics(tmp_path, capsys):
    cli = WeightDecayCLI(
        args=["--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    shown = capsys.readouterr()
    last = (shown.out + shown.err).replace("\r", "\n").strip().splitlines()
    final = [line for line in last if line.startswith("Epoch")][-1]
    assert final.startswith("Epoch 2: 100%") and "4/4" in final and "v_num=0" in final


@pytest.mark.slow
@pytest.mark.parametrize("validation_batch_size", [None, 10])
def test_timed_progress_bar_drawing_at_every_chance(tmp_path, capsys, validation_batch_size):
    # A refresh interval shorter than any batch draws every bar, the validation one included.
    from lightning.pytorch import Trainer

    from wd_lightning import LinearRegression, SyntheticRegressionDataModule

    bar = TimedProgressBar(refresh_seconds=1e-9)
    trainer = Trainer(
        max_epochs=2,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = SyntheticRegressionDataModule(val_batch_size=validation_batch_size)
    trainer.fit(LinearRegression(), data)
    shown = capsys.readouterr()
    lines = (shown.out + shown.err).replace("\r", "\n").splitlines()
    assert any(line.startswith("Validation") for line in lines)
    assert [line for line in lines if line.startswith("Epoch")][-1].startswith("Epoch 1: 100%")
