from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from tests.fits import quiet_trainer
from wd_lightning import LinearRegression, SyntheticRegressionDataModule
from wd_lightning.cli import WeightDecayCLI
from wd_lightning.training.rundir import discard_unstarted_run


def test_api_checkpoint_loads_with_weights_only_even_with_a_numpy_lambda(tmp_path):
    # np.float64 is a float, so it passes the checks; stored as is it would not load safely.
    module = LinearRegression(num_inputs=8, weight_decay=np.float64(3.0))
    trainer = quiet_trainer(max_steps=2, default_root_dir=tmp_path)
    trainer.fit(module, SyntheticRegressionDataModule(num_inputs=8))
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    raw = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert type(raw["hyper_parameters"]["weight_decay"]) is float
    loaded = LinearRegression.load_from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.weight_decay == 3.0
    torch.testing.assert_close(loaded.model.weight, module.model.weight)


def test_cli_checkpoint_loads_with_weights_only(tmp_path):
    args = ["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"]
    cli = WeightDecayCLI(args=[*args, "--trainer.enable_progress_bar", "false"])
    path = f"{cli.trainer.log_dir}/checkpoints/last.ckpt"
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["_class_path"] == "wd_lightning.LinearRegression"
    loaded = LinearRegression.load_from_checkpoint(path, weights_only=True)
    torch.testing.assert_close(loaded.model.weight, cli.model.model.weight)


def _started_run(tmp_path, *files):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.experiment  # noqa: B018 - creates the run directory, as a fit's setup does
    for name in files:
        path = tmp_path / "lightning_logs" / "version_0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return SimpleNamespace(is_global_zero=True, global_step=0, loggers=[logger])


def test_unstarted_run_directory_is_removed(tmp_path):
    trainer = _started_run(tmp_path, "config.yaml", "hparams.yaml")
    assert discard_unstarted_run(trainer) == [str(tmp_path / "lightning_logs" / "version_0")]
    assert not (tmp_path / "lightning_logs").exists()


def test_run_directory_with_a_checkpoint_or_steps_is_kept(tmp_path):
    trainer = _started_run(tmp_path, "config.yaml", "checkpoints/last.ckpt")
    assert discard_unstarted_run(trainer) == []
    trainer = _started_run(tmp_path / "stepped", "config.yaml")
    trainer.global_step = 3
    assert discard_unstarted_run(trainer) == []
    assert (tmp_path / "stepped" / "lightning_logs" / "version_0").is_dir()
    # Resumed from step 3 and failed before a step of its own: nothing new, so it goes.
    assert discard_unstarted_run(trainer, start_step=3)
