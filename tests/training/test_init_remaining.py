"""``weight_decay/init_remaining/<group>``: the logged factor, by the null-space law and by hand."""

import math

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from tests.fits import quiet_trainer
from wd_lightning import LinearRegression, SyntheticRegressionDataModule, WeightNormMonitor
from wd_lightning.core.analysis import RowSpace
from wd_lightning.training import callbacks
from wd_lightning.training.tensorboard import read_scalars

TAG = "weight_decay/init_remaining/decay"


def _logged_fit(tmp_path, model, *, epochs=100, ckpt_path=None, **trainer_kwargs):
    """Fit ``model`` on the book's data with the monitor; the run's scalars and the data."""
    data = SyntheticRegressionDataModule()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=epochs, logger=logger, callbacks=[WeightNormMonitor()], **trainer_kwargs
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return read_scalars(logger.log_dir), data, trainer


def _book_model(**kwargs):
    seed_everything(0, verbose=False)
    model = LinearRegression(weight_decay=3.0, **kwargs)
    return model, model.model.weight.detach().clone()


def _null_space_ratio(data, initial, model) -> float:
    """‖P⊥w_T‖ / ‖P⊥w₀‖, measured in the null space of the training inputs."""
    space = RowSpace(data.X_train)
    return float(space.split(model.model.weight).null.norm() / space.split(initial).null.norm())


def test_book_run_matches_the_null_space_law(tmp_path):
    model, initial = _book_model()
    scalars, data, _ = _logged_fit(tmp_path, model, log_every_n_steps=4)
    logged = dict(scalars[TAG])
    assert sorted(logged) == sorted(dict(scalars["weight_norm/decay"]))  # the norms' steps
    assert len(logged) == 101
    assert "weight_decay/init_remaining/no_decay" not in scalars  # λ = 0: nothing to track
    # (1 − ηλ)^T: 0.991^400 = 2.7 % of the initial weights left, as docs/timescale.md says.
    assert logged[400] == pytest.approx(0.991**400, rel=1e-6)
    assert logged[400] == pytest.approx(_null_space_ratio(data, initial, model), rel=1e-5)
    for step, value in logged.items():
        assert value == pytest.approx(0.991**step, rel=1e-6)


def test_loss_penalty_is_tracked_as_coupled_sgd(tmp_path):
    # penalty="loss" hands the optimizer λ = 0; the monitor takes λ from the module.
    model, initial = _book_model(penalty="loss")
    scalars, data, _ = _logged_fit(tmp_path, model, epochs=25, log_every_n_steps=4)
    final = scalars[TAG][-1]
    assert final[0] == 100
    assert final[1] == pytest.approx(0.991**100, rel=1e-6)
    assert final[1] == pytest.approx(_null_space_ratio(data, initial, model), rel=1e-5)


def _cosine_lr(epoch: int, total: int, base: float, minimum: float) -> float:
    return minimum + (base - minimum) * (1 + math.cos(math.pi * epoch / total)) / 2


def test_cosine_schedule_by_hand_and_the_null_space_law(tmp_path):
    epochs, base, minimum = 100, 0.003, 0.0005
    model, initial = _book_model(
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs, eta_min=minimum
        )
    )
    scalars, data, trainer = _logged_fit(tmp_path, model, epochs=epochs, log_every_n_steps=4)
    assert trainer.lr_scheduler_configs[0].interval == "epoch"  # 4 steps per lr value
    by_hand, expected = 1.0, {0: 1.0}
    for step in range(400):
        by_hand *= 1 - _cosine_lr(step // 4, epochs, base, minimum) * 3.0
        expected[step + 1] = by_hand
    logged = dict(scalars[TAG])
    for step, value in logged.items():
        assert value == pytest.approx(expected[step], rel=1e-6), step
    # Not the constant-lr law: the schedule's product, which the null space obeys too.
    assert logged[400] > 2 * 0.991**400
    assert logged[400] == pytest.approx(_null_space_ratio(data, initial, model), rel=1e-5)


def test_coupled_adam_logs_no_factor_and_says_why(tmp_path, caplog):
    model, _ = _book_model(optimizer=lambda groups: torch.optim.Adam(groups, lr=0.01))
    with caplog.at_level("INFO"):
        scalars, _, _ = _logged_fit(tmp_path, model, epochs=2, log_every_n_steps=4)
    assert not [tag for tag in scalars if tag.startswith("weight_decay/")]
    assert "no closed-form timescale" in caplog.text
    assert "weight_norm/decay" in scalars


def test_adamw_factor_follows_the_learning_rate(tmp_path):
    model, _ = _book_model(optimizer=lambda groups: torch.optim.AdamW(groups, lr=0.01))
    scalars, _, _ = _logged_fit(tmp_path, model, epochs=10, log_every_n_steps=4)
    assert scalars[TAG][-1] == (40, pytest.approx((1 - 0.01 * 3.0) ** 40, rel=1e-6))


def test_a_resumed_fit_continues_the_product(tmp_path):
    model, _ = _book_model()
    _, _, trainer = _logged_fit(tmp_path / "first", model, epochs=50, log_every_n_steps=4)
    checkpoint = tmp_path / "half.ckpt"
    trainer.save_checkpoint(checkpoint)
    resumed, _ = _book_model()
    scalars, _, _ = _logged_fit(
        tmp_path / "second", resumed, epochs=100, ckpt_path=checkpoint, log_every_n_steps=4
    )
    assert dict(scalars[TAG])[400] == pytest.approx(0.991**400, rel=1e-6)


def test_no_factor_when_switched_off(tmp_path):
    model, _ = _book_model()
    data = SyntheticRegressionDataModule()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    monitor = WeightNormMonitor(log_init_remaining=False)
    trainer = quiet_trainer(max_epochs=2, logger=logger, callbacks=[monitor], log_every_n_steps=4)
    trainer.fit(model, data)
    assert not [tag for tag in read_scalars(logger.log_dir) if tag.startswith("weight_decay/")]
    assert monitor.state_dict() == {}


def test_the_factor_is_a_python_float_between_logging_steps(tmp_path):
    # Python-float learning rates keep the product on the host: no device work, no sync.
    model, _ = _book_model()
    monitor = WeightNormMonitor()
    seen = []

    class Spy(callbacks.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.extend(factor.value for factor, _ in monitor._factors[0].values())

    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=2, logger=logger, callbacks=[monitor, Spy()], log_every_n_steps=4
    )
    trainer.fit(model, SyntheticRegressionDataModule())
    assert len(seen) == 8 and all(type(value) is float for value in seen)
    assert seen[-1] == pytest.approx(0.991**8, rel=1e-12)
