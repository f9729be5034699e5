"""The module, the weight-norm monitor and the sweep next to Lightning's own parts.

Each combination runs through the Python API and, where the CLI exposes it,
through ``wd-lightning fit``. Fits are the book's 201-parameter model for a
few epochs (4 optimizer steps each), so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import csv
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.cli import ReduceLROnPlateau
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from torch.utils.data import DataLoader, TensorDataset

from tests.fits import quiet_trainer
from wd_lightning import (
    HalfMSELoss,
    LinearRegression,
    SyntheticRegressionDataModule,
    WeightNormMonitor,
    param_groups,
)
from wd_lightning.cli import WeightDecayCLI
from wd_lightning.training.tensorboard import read_scalars

EPOCHS = 3
QUIET = ["--trainer.enable_progress_bar", "false"]


def _fit(make_module=None, data=None, epochs=EPOCHS, **trainer_kwargs):
    """The book's run (λ = 3, seed 0) for a few epochs, with ``trainer_kwargs``.

    ``make_module`` builds the module after seeding, so every fit starts alike.
    """
    seed_everything(0, verbose=False)
    module = make_module() if make_module is not None else LinearRegression(weight_decay=3.0)
    data = data if data is not None else SyntheticRegressionDataModule()
    trainer = quiet_trainer(max_epochs=epochs, **trainer_kwargs)
    trainer.fit(module, data)
    return module, data, trainer


def _cli(root: Path, *args: str, subcommand: str = "fit", epochs: int = EPOCHS) -> WeightDecayCLI:
    return WeightDecayCLI(
        args=[
            subcommand,
            "--trainer.default_root_dir", str(root),
            "--trainer.max_epochs", str(epochs),
            *QUIET,
            *args,
        ]
    )  # fmt: skip


def _weights(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


def _assert_same_weights(ours, theirs, rtol=1e-5, atol=1e-6):
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=rtol, atol=atol)


def _csv_rows(log_dir: str | Path) -> list[dict[str, str]]:
    with (Path(log_dir) / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _csv_values(log_dir, tag: str) -> list[float]:
    return [float(row[tag]) for row in _csv_rows(log_dir) if row.get(tag)]


# -------------------------------------------- ModelCheckpoint and EarlyStopping
@pytest.mark.parametrize("monitor", ["train/loss", "val/loss"])
def test_checkpoint_and_early_stopping_follow_either_loss(tmp_path, monitor):
    # Lightning's default log_every_n_steps=50 is more than a whole run here:
    # train/loss must still be there for the callbacks after every step.
    checkpoint = ModelCheckpoint(tmp_path, monitor=monitor, save_top_k=1)
    # min_delta so large that only the first check improves: it stops after the second.
    stopping = EarlyStopping(monitor=monitor, patience=1, min_delta=1e9)
    _, _, trainer = _fit(
        epochs=10,
        log_every_n_steps=50,
        enable_checkpointing=True,
        callbacks=[checkpoint, stopping],
    )
    assert trainer.should_stop and trainer.current_epoch == 2
    assert checkpoint.best_model_score is not None and torch.isfinite(checkpoint.best_model_score)
    assert Path(checkpoint.best_model_path).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["train/loss", "val/loss"])
def test_checkpoint_and_early_stopping_through_the_cli(tmp_path, monitor):
    cli = _cli(
        tmp_path,
        "--trainer.log_every_n_steps", "50",
        "--trainer.callbacks", "ModelCheckpoint",
        "--trainer.callbacks.monitor", monitor,
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor", monitor,
        "--trainer.callbacks.patience", "1",
        "--trainer.callbacks.min_delta", "1e9",
        epochs=10,
    )  # fmt: skip
    assert cli.trainer.current_epoch == 2
    (checkpoint,) = [c for c in cli.trainer.checkpoint_callbacks if c.monitor == monitor]
    assert Path(checkpoint.best_model_path).is_file()


# ------------------------------------------------------------ learning rates
def _step_lr_values(run: Path) -> list[float]:
    scalars = read_scalars(run)
    (tag,) = [tag for tag in scalars if tag.startswith("lr-") and tag.endswith("decay")][:1]
    return [value for _, value in scalars[tag]]


def test_a_scheduler_in_yaml_is_followed_by_learning_rate_monitor(tmp_path):
    config = tmp_path / "schedule.yaml"
    config.write_text(
        "model:\n"
        "  init_args:\n"
        "    lr_scheduler:\n"
        "      class_path: torch.optim.lr_scheduler.StepLR\n"
        "      init_args: {step_size: 1, gamma: 0.5}\n"
        "trainer:\n"
        "  log_every_n_steps: 1\n"
        "  callbacks:\n"
        "    - class_path: LearningRateMonitor\n"
        "      init_args: {logging_interval: epoch}\n"
    )
    cli = _cli(tmp_path, "--config", str(config))
    rates = _step_lr_values(Path(cli.trainer.log_dir))
    assert rates == pytest.approx([0.003, 0.0015, 0.00075])
    # The schedule acts on both groups, and the decay group keeps its λ.
    groups = cli.trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.003 * 0.5**EPOCHS] * 2)
    assert [g["weight_decay"] for g in groups] == [3.0, 0.0]


def test_learning_rate_monitor_with_a_scheduler_through_the_api(tmp_path):
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    _, _, trainer = _fit(
        lambda: LinearRegression(weight_decay=3.0, lr_scheduler=scheduler),
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor("epoch")],
    )
    assert _step_lr_values(Path(trainer.log_dir)) == pytest.approx([0.003, 0.0003, 0.00003])


@pytest.mark.parametrize(
    "scheduler",
    [
        # lightning's ReduceLROnPlateau carries its monitor: train/loss here.
        partial(ReduceLROnPlateau, monitor="train/loss", patience=0, threshold=1.0),
        # torch's own follows val/loss.
        partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, threshold=1.0),
    ],
    ids=["train-loss", "val-loss"],
)
def test_reduce_lr_on_plateau_follows_a_loss(scheduler):
    # threshold=1: no value counts as an improvement (not even the first: the
    # bound best·(1 − threshold) starts at inf·0), so every epoch's end cuts the rate by 10.
    _, _, trainer = _fit(lambda: LinearRegression(weight_decay=3.0, lr_scheduler=scheduler))
    rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert rates == pytest.approx([0.003 * 0.1**EPOCHS] * 2)


def test_reduce_lr_on_plateau_through_the_cli(tmp_path):
    cli = _cli(
        tmp_path,
        "--model.lr_scheduler", "lightning.pytorch.cli.ReduceLROnPlateau",
        "--model.lr_scheduler.monitor", "train/loss",
        "--model.lr_scheduler.patience", "0",
        "--model.lr_scheduler.threshold", "1.0",
    )  # fmt: skip
    rates = [group["lr"] for group in cli.trainer.optimizers[0].param_groups]
    assert rates == pytest.approx([0.003 * 0.1**EPOCHS] * 2)


# ----------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("penalty", ["optimizer", "loss"])
def test_accumulated_batches_equal_the_larger_batch(penalty):
    # Decay once per optimizer step: 5 × 2 accumulated is one batch of 10.
    accumulated, _, steps_a = _fit(
        lambda: LinearRegression(weight_decay=3.0, penalty=penalty),
        SyntheticRegressionDataModule(batch_size=5),
        accumulate_grad_batches=2,
    )
    larger, _, steps_b = _fit(
        lambda: LinearRegression(weight_decay=3.0, penalty=penalty),
        SyntheticRegressionDataModule(batch_size=10),
    )
    assert steps_a.global_step == steps_b.global_step == 2 * EPOCHS
    _assert_same_weights(_weights(accumulated), _weights(larger))


@pytest.mark.slow
def test_accumulated_batches_equal_the_larger_batch_through_the_cli(tmp_path):
    accumulated = _cli(
        tmp_path / "a", "--data.batch_size", "5", "--trainer.accumulate_grad_batches", "2"
    )
    larger = _cli(tmp_path / "b", "--data.batch_size", "10")
    _assert_same_weights(_weights(accumulated.model), _weights(larger.model))


# -------------------------------------------------------- gradient clipping
def _plain_torch_fit(algorithm: str, clip: float, penalty: str) -> dict[str, torch.Tensor]:
    """The same run as a hand-written loop: clip, then SGD applies weight_decay."""
    seed_everything(0, verbose=False)
    model = copy.deepcopy(LinearRegression(weight_decay=3.0).model)
    data = SyntheticRegressionDataModule()
    data.setup("fit")
    weight_decay = 3.0 if penalty == "optimizer" else 0.0
    optimizer = torch.optim.SGD(param_groups(model, weight_decay=weight_decay), lr=0.003)
    for epoch in range(EPOCHS):
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = HalfMSELoss()(model(inputs), targets)
            if penalty == "loss":
                loss = loss + 0.5 * 3.0 * model.weight.square().sum()
            loss.backward()
            if algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            else:
                torch.nn.utils.clip_grad_value_(model.parameters(), clip)
            optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("algorithm", ["norm", "value"])
@pytest.mark.parametrize("penalty", ["optimizer", "loss"])
def test_gradient_clipping_clips_what_the_plain_loop_clips(algorithm, penalty):
    # With λ in the optimizer the clipper never sees λ·w; with it in the loss it does.
    clip = 0.05
    module, _, _ = _fit(
        lambda: LinearRegression(weight_decay=3.0, penalty=penalty),
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )
    _assert_same_weights(_weights(module), _plain_torch_fit(algorithm, clip, penalty))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_through_the_cli(tmp_path, algorithm):
    cli = _cli(
        tmp_path,
        "--trainer.gradient_clip_val", "0.05",
        "--trainer.gradient_clip_algorithm", algorithm,
    )  # fmt: skip
    _assert_same_weights(_weights(cli.model), _plain_torch_fit(algorithm, 0.05, "optimizer"))


# ------------------------------------------------------------------ precision
def test_bf16_mixed_precision_on_cpu_trains_like_float32(tmp_path):
    full, _, _ = _fit()
    logger = CSVLogger(tmp_path)
    mixed, _, trainer = _fit(
        precision="bf16-mixed", logger=logger, log_every_n_steps=1, callbacks=[WeightNormMonitor()]
    )
    norm = mixed.model.weight.norm().item()
    assert norm == pytest.approx(full.model.weight.norm().item(), rel=1e-2)
    # The monitor measures the float32 weights that bf16 autocast leaves in place.
    assert _csv_values(trainer.log_dir, "weight_norm/decay")[-1] == pytest.approx(norm, rel=1e-6)


def test_bf16_mixed_precision_through_the_cli(tmp_path):
    cli = _cli(tmp_path, "--trainer.precision", "bf16-mixed")
    scalars = read_scalars(Path(cli.trainer.log_dir))
    assert torch.isfinite(torch.tensor([value for _, value in scalars["train/loss"]])).all()
    assert scalars["weight_norm/decay"][-1][1] == pytest.approx(
        cli.model.model.weight.norm().item(), rel=1e-6
    )


# ---------------------------------------------------------------------- tuner
def test_lr_find_searches_then_the_fit_trains_from_the_same_start(tmp_path):
    seed_everything(0, verbose=False)
    module, data = LinearRegression(weight_decay=3.0), SyntheticRegressionDataModule()
    start = _weights(module)
    # The search runs within max_epochs: 100 epochs leave room for its 60 steps.
    trainer = quiet_trainer(max_epochs=100, default_root_dir=tmp_path)
    finder = Tuner(trainer).lr_find(
        module,
        datamodule=data,
        min_lr=1e-4,
        max_lr=100.0,
        num_training=60,
        early_stop_threshold=None,
        update_attr=False,
    )
    # The search raised the rate until the loss blew up (η·λ > 2), on purpose:
    # that is not a divergence of training, and the weights are restored after it.
    assert not all(map(math.isfinite, finder.results["loss"]))
    assert 1e-4 <= finder.suggestion() <= 100.0
    _assert_same_weights(_weights(module), start, rtol=0, atol=0)
    trainer.fit(module, data)
    assert trainer.global_step == 400
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["decay", "no_decay"]


def test_scale_batch_size_changes_the_data_and_the_fit_follows():
    seed_everything(0, verbose=False)
    module, data = LinearRegression(weight_decay=3.0), SyntheticRegressionDataModule()
    trainer = quiet_trainer(max_epochs=EPOCHS)
    found = Tuner(trainer).scale_batch_size(
        module, datamodule=data, mode="power", steps_per_trial=1, init_val=5, max_trials=2
    )
    assert found == data.batch_size > 5
    trainer.fit(module, data)
    assert trainer.global_step == math.ceil(20 / found) * EPOCHS


# ---------------------------------------------------------------- averaging
def test_stochastic_weight_averaging_and_the_monitor_agree_on_the_final_weights(tmp_path):
    logger = CSVLogger(tmp_path)
    swa = StochasticWeightAveraging(swa_lrs=0.001, swa_epoch_start=1)
    module, _, trainer = _fit(
        epochs=4, logger=logger, log_every_n_steps=4, callbacks=[swa, WeightNormMonitor()]
    )
    # The last point the monitor writes is the model the fit hands back: the average.
    final = _csv_values(trainer.log_dir, "weight_norm/decay")[-1]
    assert final == pytest.approx(module.model.weight.norm().item(), rel=1e-6)
    plain, _, _ = _fit(epochs=4)
    assert not torch.allclose(plain.model.weight, module.model.weight)


@pytest.mark.slow
def test_stochastic_weight_averaging_through_the_cli(tmp_path):
    cli = _cli(
        tmp_path,
        "--trainer.callbacks", "StochasticWeightAveraging",
        "--trainer.callbacks.swa_lrs", "0.001",
        "--trainer.callbacks.swa_epoch_start", "1",
        epochs=4,
    )  # fmt: skip
    scalars = read_scalars(Path(cli.trainer.log_dir))
    assert scalars["weight_norm/decay"][-1][1] == pytest.approx(
        cli.model.model.weight.norm().item(), rel=1e-6
    )


# -------------------------------------------------------------------- loggers
def test_csv_logger_alone_gets_the_losses_and_the_norms(tmp_path):
    _, _, trainer = _fit(
        logger=CSVLogger(tmp_path), log_every_n_steps=4, callbacks=[WeightNormMonitor()]
    )
    rows = _csv_rows(trainer.log_dir)
    for tag in ("train/loss", "val/loss", "weight_norm/decay", "weight_norm/total"):
        assert any(row.get(tag) for row in rows), tag


def test_the_monitor_writes_to_every_logger(tmp_path):
    loggers = [TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv")]
    _fit(logger=loggers, log_every_n_steps=4, callbacks=[WeightNormMonitor()])
    from_tensorboard = [v for _, v in read_scalars(Path(loggers[0].log_dir))["weight_norm/decay"]]
    from_csv = _csv_values(loggers[1].log_dir, "weight_norm/decay")
    assert len(from_csv) == EPOCHS + 1  # one per epoch and the trained model
    assert from_csv == pytest.approx(from_tensorboard, rel=1e-6)


def test_csv_logger_alone_and_next_to_tensorboard_through_the_cli(tmp_path):
    alone = _cli(
        tmp_path / "alone", "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path / "alone"),
    )  # fmt: skip
    assert _csv_values(alone.trainer.log_dir, "weight_norm/decay")
    both = f"[{{class_path: CSVLogger, init_args: {{save_dir: {tmp_path / 'both'}}}}},"
    both += f" {{class_path: TensorBoardLogger, init_args: {{save_dir: {tmp_path / 'both'}}}}}]"
    cli = _cli(tmp_path / "both", "--trainer.logger", both)
    csv_logger, tensorboard = cli.trainer.loggers
    from_csv = _csv_values(csv_logger.log_dir, "weight_norm/decay")
    from_tensorboard = read_scalars(Path(tensorboard.log_dir))["weight_norm/decay"]
    assert from_csv == pytest.approx([value for _, value in from_tensorboard], rel=1e-6)


# --------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "backend"),
    [
        # Lightning's way: compile the LightningModule (its steps are compiled too).
        ("module", "eager"),
        ("module", "aot_eager"),
        # Or compile only the wrapped network; inductor generates and builds C++ here.
        ("inner-model", "aot_eager"),
        ("inner-model", "inductor"),
    ],
)
def test_a_compiled_model_trains_like_the_eager_one(what, backend):
    torch._dynamo.reset()
    eager, _, _ = _fit()
    seed_everything(0, verbose=False)
    module = LinearRegression(weight_decay=3.0)
    if what == "inner-model":
        module.model = torch.compile(module.model, backend=backend)
        target = module
    else:
        target = torch.compile(module, backend=backend)
    data = SyntheticRegressionDataModule()
    trainer = quiet_trainer(max_epochs=EPOCHS, callbacks=[WeightNormMonitor()])
    trainer.fit(target, data)
    compiled = {name.replace("_orig_mod.", ""): p for name, p in _weights(module).items()}
    _assert_same_weights(compiled, _weights(eager))


# ------------------------------------------------------------- predict, test
def test_predict_returns_the_models_outputs_for_inputs_or_pairs():
    module, data, trainer = _fit(epochs=1)
    inputs, targets = data.X_val[:10], data.y_val[:10]
    expected = module.model(inputs).detach()
    pairs = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    alone = DataLoader(inputs, batch_size=4)
    for loader in (pairs, alone):
        predictions = torch.cat(trainer.predict(module, dataloaders=loader))
        torch.testing.assert_close(predictions, expected)


def _test_loss(module, data) -> float:
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (results,) = trainer.test(module, datamodule=data, verbose=False)
    return results["test/loss"]


def test_checkpoint_reloads_and_tests_like_the_trained_module(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, save_last=True)
    module, data, _ = _fit(enable_checkpointing=True, callbacks=[checkpoint])
    loaded = LinearRegression.load_from_checkpoint(checkpoint.last_model_path)
    _assert_same_weights(_weights(loaded), _weights(module), rtol=0, atol=0)
    assert _test_loss(loaded, data) == _test_loss(module, data)


def test_checkpoint_then_test_through_the_cli(tmp_path):
    fitted = _cli(tmp_path)
    last = Path(fitted.trainer.checkpoint_callback.last_model_path)
    tested = _cli(tmp_path, "--ckpt_path", str(last), subcommand="test")
    assert tested.trainer.callback_metrics["test/loss"].item() == pytest.approx(
        _test_loss(fitted.model, fitted.datamodule), rel=1e-6
    )


# -------------------------------------------- optimizers that need the training set-up
@pytest.mark.slow
def test_zero_redundancy_optimizer_is_built_where_its_process_group_exists(tmp_path):
    # Outside a process group it cannot be built; the module must not try at construction.
    from torch.distributed.optim import ZeroRedundancyOptimizer

    factory = partial(ZeroRedundancyOptimizer, optimizer_class=torch.optim.SGD, lr=0.003)
    module, _, trainer = _fit(
        lambda: LinearRegression(weight_decay=3.0, optimizer=factory),
        strategy="ddp",
        default_root_dir=tmp_path,
    )
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, ZeroRedundancyOptimizer)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [3.0, 0.0]
    eager, _, _ = _fit()
    _assert_same_weights(_weights(module), _weights(eager))
