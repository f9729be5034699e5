"""Small helpers shared by the tests that run real fits."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from wd_lightning import LinearRegression, SyntheticRegressionDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def quiet_trainer(**overrides: Any) -> Trainer:
    """A Trainer with no logger, checkpoints or console output unless asked for."""
    kwargs: dict[str, Any] = {
        "max_epochs": 100,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    kwargs.update(overrides)
    return Trainer(**kwargs)


def fit_book(
    weight_decay: float, seed: int = 0, data_seed: int = 0, **trainer_kwargs: Any
) -> tuple[LinearRegression, SyntheticRegressionDataModule, Trainer]:
    """The article's run in-process: seed, model, data and a quiet trainer."""
    seed_everything(seed, verbose=False)
    model = LinearRegression(weight_decay=weight_decay)
    data = SyntheticRegressionDataModule(data_seed=data_seed)
    trainer = quiet_trainer(**trainer_kwargs)
    trainer.fit(model, data)
    return model, data, trainer


class WeightRecorder(Callback):
    """Keeps a copy of every parameter after each optimizer step."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self._seen_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._seen_step:
            self._seen_step = trainer.global_step
            self.snapshots.append(
                {name: p.detach().clone() for name, p in pl_module.named_parameters()}
            )


class SignalAt(Callback):
    """Sends this process a signal right after optimizer step ``step``, as a user or a scheduler.

    ``times=2`` sends it twice in a row (a second Ctrl+C). The CLI takes it as
    ``--trainer.callbacks tests.fits.SignalAt --trainer.callbacks.step 6``.
    """

    def __init__(self, step: int, signal_name: str = "SIGTERM", times: int = 1) -> None:
        self.step = step
        self.signal_name = signal_name
        self.times = times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                signal.raise_signal(getattr(signal, self.signal_name))


class ArriveTogether(Callback):
    """Holds a fit at setup until ``parties`` processes have arrived, then lets all go at once.

    Makes two CLI processes ask for their run directory at the same moment:
    ``--trainer.callbacks tests.fits.ArriveTogether --trainer.callbacks.folder DIR``.
    Callbacks given on the command line run their ``setup`` before the CLI's
    config saver, which is where the run directory is first asked for.
    """

    def __init__(self, folder: str, parties: int = 2, timeout: float = 120.0) -> None:
        self.folder = Path(folder)
        self.parties = parties
        self.timeout = timeout

    def setup(self, trainer, pl_module, stage) -> None:
        import os
        import time

        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"arrived.{os.getpid()}").touch()
        deadline = time.monotonic() + self.timeout
        while len(list(self.folder.glob("arrived.*"))) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only some of {self.parties} processes arrived")
            time.sleep(0.01)
        trainer.logger.version  # noqa: B018 - every process picks its version now, together
