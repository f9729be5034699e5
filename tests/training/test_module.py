import re
from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.overrides import TorchFunctionMode

from tests.fits import WeightRecorder, quiet_trainer
from wd_lightning import (
    BatchMismatchError,
    HalfMSELoss,
    InvalidArgumentError,
    LinearRegression,
    SyntheticRegressionDataModule,
    TrainingDivergedError,
    WeightDecayModule,
)


def test_half_mse_is_half_the_mean_squared_error():
    prediction, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    assert HalfMSELoss()(prediction, target).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_configure_optimizers_builds_named_groups_with_default_sgd():
    module = WeightDecayModule(nn.Linear(4, 1), weight_decay=0.25)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    names = [(g["name"], g["weight_decay"], g["lr"]) for g in optimizer.param_groups]
    assert names == [("decay", 0.25, 0.003), ("no_decay", 0.0, 0.003)]
    assert optimizer.param_groups[0]["param_names"] == ["weight"]


def test_injected_optimizer_keeps_the_groups():
    module = WeightDecayModule(
        nn.Linear(4, 1), weight_decay=0.5, optimizer=lambda p: torch.optim.AdamW(p, lr=0.1)
    )
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]


def test_lr_scheduler_is_attached():
    module = WeightDecayModule(
        nn.Linear(2, 1), lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1)
    )
    config = module.configure_optimizers()
    assert isinstance(config["lr_scheduler"], torch.optim.lr_scheduler.StepLR)


def test_loss_penalty_zeroes_optimizer_decay_and_adds_half_lambda_norm_squared():
    module = WeightDecayModule(nn.Linear(3, 1), weight_decay=2.0, penalty="loss")
    optimizer = module.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    expected = 0.5 * 2.0 * module.model.weight.detach().square().sum()
    torch.testing.assert_close(module.penalty_term().detach(), expected)


def test_loss_penalty_gradient_is_finite_at_zero_weights():
    model = nn.Linear(3, 1)
    nn.init.zeros_(model.weight)
    module = WeightDecayModule(model, weight_decay=1.0, penalty="loss")
    module.configure_optimizers()
    module.penalty_term().backward()
    assert torch.equal(model.weight.grad, torch.zeros_like(model.weight))


def test_linear_regression_is_the_book_model():
    seed_everything(0, verbose=False)
    module = LinearRegression()
    weight, bias = module.model.weight, module.model.bias
    assert weight.shape == (1, 200) and module.weight_decay == 3.0
    assert bias.item() == 0.0
    assert 0.8 < weight.std().item() < 1.2  # N(0, 1)
    assert LinearRegression(init_std=0.0, bias_init=0.5).model.bias.item() == 0.5


def _trajectory(penalty: str, optimizer, steps_epochs: int = 5):
    seed_everything(3, verbose=False)
    module = LinearRegression(weight_decay=3.0, penalty=penalty, optimizer=optimizer)
    recorder = WeightRecorder()
    quiet_trainer(max_epochs=steps_epochs, callbacks=[recorder], num_sanity_val_steps=0).fit(
        module, SyntheticRegressionDataModule()
    )
    return recorder.snapshots


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.003),
        lambda p: torch.optim.SGD(p, lr=0.003, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.003, momentum=0.9, nesterov=True),
    ],
    ids=["sgd", "momentum", "nesterov"],
)
def test_loss_and_optimizer_penalties_give_the_same_trajectory_with_sgd(optimizer):
    by_optimizer = _trajectory("optimizer", optimizer)
    by_loss = _trajectory("loss", optimizer)
    assert len(by_optimizer) == len(by_loss) == 20
    for step, (a, b) in enumerate(zip(by_optimizer, by_loss, strict=True)):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"step {step}")
    # The trajectories really moved, so the comparison is not vacuous.
    assert not torch.equal(by_optimizer[0]["model.weight"], by_optimizer[-1]["model.weight"])


class _UnusedWeight(nn.Module):
    """A weight the loss does not depend on: only decay moves it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(200, 1)
        self.idle = nn.Parameter(torch.ones(3, 3))

    def forward(self, x):
        # 0·idle keeps a (zero) gradient, so SGD applies its decay on every step.
        return self.linear(x) + 0.0 * self.idle.sum()


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_decay_is_applied_once_per_optimizer_step_under_accumulation(accumulate):
    module = WeightDecayModule(_UnusedWeight(), weight_decay=3.0)
    trainer = quiet_trainer(max_epochs=3, accumulate_grad_batches=accumulate)
    trainer.fit(module, SyntheticRegressionDataModule())
    assert trainer.global_step == 12 // accumulate
    expected = torch.full((3, 3), (1 - 0.003 * 3.0) ** trainer.global_step)
    torch.testing.assert_close(module.model.idle.detach(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"penalty": "both"}, "penalty"),
        ({"optimizer": partial(torch.optim.SGD, lr=0.0)}, "optimizer.lr"),
        (
            {"optimizer": partial(torch.optim.SGD, lr=0.1, weight_decay=0.5)},
            "optimizer.weight_decay",
        ),
        ({"optimizer": partial(torch.optim.SGD, lr=0.1, momentun=0.9)}, "optimizer.momentun"),
        ({"optimizer": torch.optim.Rprop}, "optimizer"),
        ({"optimizer": "SGD"}, "optimizer"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as raised:
        WeightDecayModule(nn.Linear(2, 1), **kwargs)
    assert raised.value.argument == argument


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.0), "optimizer.lr"),
        (lambda p: torch.optim.SGD(p, lr=-1.0), "optimizer"),
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.5), "optimizer.weight_decay"),
        (lambda p: torch.optim.LBFGS(p), "optimizer"),
    ],
)
def test_a_plain_function_factory_is_checked_when_the_optimizer_is_built(factory, argument):
    # A function shows no arguments before it is called, and it is called only
    # in configure_optimizers (some optimizers need the training set-up).
    module = WeightDecayModule(nn.Linear(2, 1), optimizer=factory)
    with pytest.raises(InvalidArgumentError) as raised:
        module.configure_optimizers()
    assert raised.value.argument == argument


def test_the_optimizer_is_built_only_in_configure_optimizers_on_the_training_device():
    calls = []

    def factory(groups):
        calls.append({p.device.type for group in groups for p in group["params"]})
        return torch.optim.SGD(groups, lr=0.1)

    module = WeightDecayModule(nn.Linear(2, 1), optimizer=factory)
    assert calls == []
    module.to("meta")  # a stand-in for an accelerator: the optimizer must see where it trains
    module.configure_optimizers()
    assert calls == [{"meta"}]


class _NoWeightDecaySGD(torch.optim.Optimizer):
    """An optimizer without a weight_decay option."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        return None


def test_optimizer_without_weight_decay_is_refused_unless_the_loss_carries_it():
    with pytest.raises(InvalidArgumentError, match="penalty='loss'"):
        WeightDecayModule(nn.Linear(2, 1), weight_decay=1.0, optimizer=_NoWeightDecaySGD)
    WeightDecayModule(
        nn.Linear(2, 1), weight_decay=1.0, optimizer=_NoWeightDecaySGD, penalty="loss"
    )


def test_model_without_trainable_parameters_is_refused():
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="at least one trainable parameter"):
        WeightDecayModule(frozen)


def test_divergence_stops_with_lr_and_lambda_in_the_message():
    seed_everything(0, verbose=False)
    module = LinearRegression(weight_decay=1000.0)
    trainer = quiet_trainer(max_epochs=100)
    with pytest.raises(TrainingDivergedError, match=r"learning rate 0\.003 and weight_decay 1000"):
        trainer.fit(module, SyntheticRegressionDataModule())
    assert trainer.global_step < 400


def test_fit_start_reports_the_groups_on_console_and_in_tensorboard(tmp_path, caplog):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from wd_lightning.testing.model_zoo import mlp_with_batchnorm

    class Shaped(SyntheticRegressionDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            self.y_train = self.y_train.expand(-1, 3).contiguous()
            self.y_val = self.y_val.expand(-1, 3).contiguous()

    module = WeightDecayModule(mlp_with_batchnorm(inputs=200), weight_decay=0.2)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    with caplog.at_level("INFO"):
        quiet_trainer(max_epochs=1, logger=logger).fit(module, Shaped())
    assert "Parameter groups:" in caplog.text
    assert "no_decay  4" in caplog.text  # two biases and the BatchNorm weight and bias
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    text = events.Tensors("param_groups/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| `1.weight` | [16] | no_decay | norm layer (BatchNorm1d) |" in text


def test_decay_rules_reach_the_optimizer():
    from wd_lightning import DecayRules

    module = WeightDecayModule(
        nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)),
        weight_decay=0.1,
        decay_rules=DecayRules(decay_norm=True, no_decay=("0.weight",)),
    )
    groups = module.configure_optimizers().param_groups
    assert groups[0]["param_names"] == ["1.weight", "1.bias"]
    assert groups[1]["param_names"] == ["0.weight", "0.bias"]


def test_a_pattern_matching_nothing_is_reported_under_decay_rules():
    from wd_lightning import DecayRules

    with pytest.raises(InvalidArgumentError) as raised:
        WeightDecayModule(nn.Linear(2, 1), decay_rules=DecayRules(no_decay=("head.*",)))
    assert raised.value.argument == "decay_rules.no_decay"


class _HostSyncs(TorchFunctionMode):
    """Records the tensor methods that copy a value to the host (a stall on an accelerator)."""

    READS = frozenset({"item", "__bool__", "tolist", "__float__", "__int__", "numpy"})

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


class _SyncCountingRegression(LinearRegression):
    def __init__(self) -> None:
        super().__init__(weight_decay=3.0)
        self.reads_per_step: list[int] = []

    def training_step(self, batch, batch_idx):
        with _HostSyncs() as syncs:
            loss = super().training_step(batch, batch_idx)
        self.reads_per_step.append(len(syncs.reads))
        return loss


def test_training_steps_read_nothing_on_the_host_between_logging_steps():
    seed_everything(0, verbose=False)
    module = _SyncCountingRegression()
    quiet_trainer(max_epochs=3, log_every_n_steps=4).fit(module, SyntheticRegressionDataModule())
    # 12 steps; the divergence check reads one flag on each logging step (4, 8, 12).
    assert module.reads_per_step == [0, 0, 0, 1] * 3


def test_train_loss_is_there_after_every_step_whatever_log_every_n_steps():
    seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=50)
    trainer.fit(LinearRegression(weight_decay=3.0), SyntheticRegressionDataModule())
    assert "train/loss" in trainer.callback_metrics


def test_divergence_between_logging_steps_never_reaches_a_checkpoint(tmp_path):
    seed_everything(0, verbose=False)
    checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = quiet_trainer(
        max_epochs=100, log_every_n_steps=50, enable_checkpointing=True, callbacks=[checkpoints]
    )
    module = LinearRegression(weight_decay=1000.0)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step (\d+)") as raised:
        trainer.fit(module, SyntheticRegressionDataModule())
    first = int(re.search(r"step (\d+)", str(raised.value)).group(1))
    # Named exactly, though only read at the next logging step (or checkpoint).
    assert first % 50 != 0 and trainer.global_step <= first + 1
    saved = sorted(tmp_path.glob("*.ckpt"))
    assert saved  # the finite steps were saved
    for path in saved:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(value).all() for value in state.values()), path.name


class _OutOfRangeGather(nn.Module):
    """A model bug: gathers column 5 of a 3-wide activation."""

    def forward(self, hidden):
        index = torch.full((hidden.shape[0], 1), 5)
        return torch.gather(hidden, 1, index)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 3), _OutOfRangeGather()),
        nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 1)),  # layers that do not fit each other
    ],
    ids=["gather-out-of-range", "inner-layers-mismatch"],
)
def test_an_error_inside_the_model_keeps_its_own_type_and_traceback(model):
    module = WeightDecayModule(model)
    with pytest.raises(RuntimeError) as raised:
        module.training_step((torch.zeros(5, 4), torch.zeros(5, 1)), 0)
    assert not isinstance(raised.value, BatchMismatchError)


def test_a_mismatch_at_the_models_input_is_reported_as_the_data():
    module = WeightDecayModule(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)))
    with pytest.raises(BatchMismatchError, match=r"inputs of shape \(5, 6\) do not fit: layer '0'"):
        module.training_step((torch.zeros(5, 6), torch.zeros(5, 1)), 0)
