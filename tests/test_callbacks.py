import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from tests.fits import quiet_trainer
from wd_lightning import (
    InvalidArgumentError,
    LinearRegression,
    SyntheticRegressionDataModule,
    WeightDecayModule,
    WeightNormMonitor,
)
from wd_lightning.tensorboard import read_scalars


class _NormsBeforeEachStep(Callback):
    """Independent reference: the weight and bias norms just before each optimizer step."""

    def __init__(self) -> None:
        self.norms: list[tuple[float, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        weight, bias = pl_module.model.weight, pl_module.model.bias
        self.norms.append((weight.detach().norm().item(), bias.detach().norm().item()))


def _fit_logged(tmp_path, epochs=5, **trainer_kwargs):
    seed_everything(0, verbose=False)
    model = LinearRegression(weight_decay=3.0)
    reference = _NormsBeforeEachStep()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[WeightNormMonitor(), reference],
        **trainer_kwargs,
    )
    trainer.fit(model, SyntheticRegressionDataModule())
    return model, trainer, reference, read_scalars(logger.log_dir)


def test_logs_group_norms_matching_independent_norms(tmp_path):
    model, _, reference, scalars = _fit_logged(tmp_path, log_every_n_steps=2)
    decay, no_decay, total = (
        dict(scalars[f"weight_norm/{g}"]) for g in ("decay", "no_decay", "total")
    )
    # Step s holds the weights after s optimizer steps: those the (s+1)-th step starts from.
    assert sorted(decay) == [*range(1, 20, 2), 20]
    for step in range(1, 20, 2):
        weight_norm, bias_norm = reference.norms[step]
        assert decay[step] == pytest.approx(weight_norm, rel=1e-6)
        assert no_decay[step] == pytest.approx(bias_norm, rel=1e-6, abs=1e-7)
        assert total[step] == pytest.approx((weight_norm**2 + bias_norm**2) ** 0.5, rel=1e-6)
    # The last point is the trained model.
    assert decay[20] == pytest.approx(model.model.weight.detach().norm().item(), rel=1e-6)


def test_norm_steps_line_up_with_the_training_loss(tmp_path):
    _, _, _, scalars = _fit_logged(tmp_path, log_every_n_steps=3)
    loss_steps = [step for step, _ in scalars["train/loss"]]
    norm_steps = [step for step, _ in scalars["weight_norm/decay"]]
    assert norm_steps[:-1] == loss_steps
    assert norm_steps[-1] == 20


@pytest.mark.parametrize("accumulate", [2, 4])
def test_once_per_optimizer_step_under_accumulation(tmp_path, accumulate):
    _, trainer, reference, scalars = _fit_logged(
        tmp_path, epochs=8, log_every_n_steps=1, accumulate_grad_batches=accumulate
    )
    assert trainer.global_step == 32 // accumulate
    steps = [step for step, _ in scalars["weight_norm/decay"]]
    assert steps == [*range(trainer.global_step), trainer.global_step]
    assert len(reference.norms) == trainer.global_step


def test_own_interval_overrides_the_trainer(tmp_path):
    seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    quiet_trainer(
        max_epochs=5, logger=logger, log_every_n_steps=1, callbacks=[WeightNormMonitor(5)]
    ).fit(LinearRegression(), SyntheticRegressionDataModule())
    steps = [step for step, _ in read_scalars(logger.log_dir)["weight_norm/total"]]
    assert steps == [4, 9, 14, 19, 20]


def test_unnamed_groups_are_called_pgN():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    norms = WeightNormMonitor.norms(optimizer)
    assert list(norms) == ["weight_norm/pg0", "weight_norm/pg1", "weight_norm/total"]
    torch.testing.assert_close(norms["weight_norm/pg0"], model.weight.detach().norm())


def test_bf16_parameters_are_measured_in_float32():
    weight = nn.Parameter(torch.full((1000,), 0.1, dtype=torch.bfloat16))
    norms = WeightNormMonitor.norms(torch.optim.SGD([weight], lr=0.1))
    assert norms["weight_norm/total"].dtype == torch.float32
    expected = weight.detach().float().norm()
    torch.testing.assert_close(norms["weight_norm/total"], expected, rtol=1e-6, atol=0)


def test_nothing_is_computed_without_a_logger(monkeypatch):
    def fail(optimizer):
        raise AssertionError("norms computed with no logger to receive them")

    monkeypatch.setattr(WeightNormMonitor, "norms", staticmethod(fail))
    module = WeightDecayModule(nn.Linear(200, 1), weight_decay=1.0)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=1, callbacks=[WeightNormMonitor()])
    trainer.fit(module, SyntheticRegressionDataModule())
    assert trainer.global_step == 4


def test_nothing_is_computed_between_logging_steps(tmp_path, monkeypatch):
    calls = []
    original = WeightNormMonitor.norms
    monkeypatch.setattr(
        WeightNormMonitor, "norms", staticmethod(lambda o: calls.append(1) or original(o))
    )
    _fit_logged(tmp_path, epochs=5, log_every_n_steps=10)
    assert len(calls) == 3  # steps 9 and 19, and the end of training


@pytest.mark.parametrize("interval", [0, -2, 1.5])
def test_bad_interval_is_rejected(interval):
    with pytest.raises(InvalidArgumentError, match="logging_interval"):
        WeightNormMonitor(interval)
