import pytest
import torch
from lightning.pytorch import seed_everything
from torch import nn

from tests.fits import WeightRecorder, quiet_trainer
from wd_lightning import (
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
        ({"optimizer": lambda p: torch.optim.SGD(p, lr=0.0)}, "optimizer.lr"),
        ({"optimizer": lambda p: torch.optim.SGD(p, lr=-1.0)}, "optimizer"),
        (
            {"optimizer": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.5)},
            "optimizer.weight_decay",
        ),
        ({"optimizer": lambda p: torch.optim.LBFGS(p)}, "optimizer"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as raised:
        WeightDecayModule(nn.Linear(2, 1), **kwargs)
    assert raised.value.argument == argument


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
