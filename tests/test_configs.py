"""Every shipped config parses, instantiates, and runs the article's experiment."""

import pytest
import torch

from tests.fits import CONFIGS
from wd_lightning.cli import WeightDecayCLI

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
QUIET = [
    "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def test_configs_are_shipped():
    assert {path.name for path in SHIPPED} >= {"d2l_no_decay.yaml", "d2l_weight_decay.yaml"}


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.name)
def test_config_parses_and_instantiates(config):
    cli = WeightDecayCLI(args=["--config", str(config)], run=False)
    optimizer = cli.model.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    assert [group["name"] for group in optimizer.param_groups][:2] == ["decay", "no_decay"]
    assert "#" in config.read_text(), "shipped configs are commented"


def _fit(config: str, seed: int, tmp_path) -> tuple[float, float]:
    """‖w‖ and the held-out ½-loss after the config's full run, for one seed."""
    args = ["fit", "--config", str(CONFIGS / config), "--seed_everything", str(seed)]
    args += ["--data.data_seed", str(seed), "--trainer.default_root_dir", str(tmp_path), *QUIET]
    cli = WeightDecayCLI(args=args)
    assert cli.trainer.global_step == 400
    weight_norm = torch.linalg.vector_norm(cli.model.model.weight).item()
    return weight_norm, cli.trainer.callback_metrics["val/loss"].item()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_decay_overfits(seed, tmp_path):
    weight_norm, held_out = _fit("d2l_no_decay.yaml", seed, tmp_path)
    assert 12 <= weight_norm <= 15.5
    assert held_out > 30


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weight_decay_shrinks_w_and_the_held_out_loss(seed, tmp_path):
    weight_norm, held_out = _fit("d2l_weight_decay.yaml", seed, tmp_path)
    assert 0.33 <= weight_norm <= 0.42
    assert held_out < 0.3


@pytest.mark.slow
def test_mlp_classifier_example_learns(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "mlp_classifier.yaml"), "--trainer.max_epochs", "5"]
    cli = WeightDecayCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    groups = cli.trainer.optimizers[0].param_groups
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert groups[0]["param_names"] == ["layers.0.weight", "layers.3.weight", "layers.6.weight"]
    assert cli.trainer.callback_metrics["val/accuracy"] > 0.6  # chance is 1/3
