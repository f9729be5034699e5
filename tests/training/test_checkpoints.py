import numpy as np
import torch

from tests.fits import quiet_trainer
from wd_lightning import LinearRegression, SyntheticRegressionDataModule
from wd_lightning.cli import WeightDecayCLI


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
