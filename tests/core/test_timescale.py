"""The decay timescale τ and the factor left of the initial weights, against torch's optimizers."""

import math

import pytest
import torch

from wd_lightning import InvalidArgumentError
from wd_lightning.core.timescale import (
    GroupDecay,
    InitialWeightFactor,
    decay_timescale,
    format_timescale,
    group_decay,
)


def _decay_of(optimizer_class, intended=None, **options):
    parameter = torch.zeros(3, requires_grad=True)
    optimizer = optimizer_class([parameter], **options)
    return group_decay(optimizer, optimizer.param_groups[0], weight_decay=intended)


@pytest.mark.parametrize(
    ("optimizer_class", "options", "intended", "kind"),
    [
        (torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.5}, None, "coupled"),
        (torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.0}, 0.5, "coupled"),  # λ in the loss
        (torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.0}, None, "none"),
        (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.5}, None, "decoupled"),
        (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.5, "decoupled_weight_decay": True}, None,
         "decoupled"),
        (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.5}, None, "adaptive"),
        (torch.optim.RMSprop, {"lr": 0.1, "weight_decay": 0.5}, None, "adaptive"),
        (torch.optim.Adagrad, {"lr": 0.1, "weight_decay": 0.5}, None, "adaptive"),
        (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.0}, 0.5, "adaptive"),  # λ in the loss
    ],
)  # fmt: skip
def test_each_optimizer_gets_its_rule(optimizer_class, options, intended, kind):
    decay = _decay_of(optimizer_class, intended, **options)
    assert decay.kind == kind
    assert decay.optimizer == optimizer_class.__name__
    assert decay.has_closed_form == (kind in ("coupled", "decoupled"))


def test_a_stale_decoupled_key_does_not_fool_sgd():
    parameter = torch.zeros(2, requires_grad=True)
    group = {"params": [parameter], "weight_decay": 0.1, "decoupled_weight_decay": True}
    assert group_decay(torch.optim.SGD([group], lr=0.1), group).kind == "coupled"


def test_adaptive_coupled_decay_has_no_timescale():
    decay = _decay_of(torch.optim.Adam, lr=1e-3, weight_decay=0.1)
    assert "no closed-form timescale" in decay.describe()
    assert format_timescale(decay, 1e-3, 10) == ("no closed form", "no closed form")
    with pytest.raises(InvalidArgumentError, match="closed form"):
        decay_timescale(1e-3, 0.1, decay)
    with pytest.raises(InvalidArgumentError, match="closed form"):
        InitialWeightFactor(decay)


def test_timescale_values():
    assert decay_timescale(0.003, 3.0) == pytest.approx(1 / 0.009)
    assert decay_timescale(0.1, 0.0) == math.inf
    momentum = GroupDecay("coupled", 1e-3, momentum=0.9, dampening=0.5, optimizer="SGD")
    assert decay_timescale(0.01, 1e-3, momentum) == pytest.approx(0.1 / (0.5 * 0.01 * 1e-3))
    assert format_timescale(GroupDecay("decoupled", 0.05), 1e-3, 8) == ("20,000", "2,500")
    assert format_timescale(GroupDecay("decoupled", 0.05), None, 8) == ("-", "-")
    assert format_timescale(GroupDecay("none"), 0.1, 8) == ("-", "-")


@pytest.mark.parametrize(("lr", "weight_decay"), [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0)])
def test_bad_arguments_are_named(lr, weight_decay):
    with pytest.raises(InvalidArgumentError, match="lr="):
        decay_timescale(lr, weight_decay)
    with pytest.raises(InvalidArgumentError, match="weight_decay="):
        decay_timescale(0.1, -1.0)
    with pytest.raises(InvalidArgumentError, match="kind="):
        GroupDecay("sometimes")


def _cosine(step, total, base, minimum=0.0):
    return minimum + (base - minimum) * (1 + math.cos(math.pi * step / total)) / 2


@pytest.mark.parametrize(
    ("optimizer_class", "options"),
    [
        (torch.optim.SGD, {"weight_decay": 0.7}),
        (torch.optim.SGD, {"weight_decay": 0.7, "momentum": 0.9}),
        (torch.optim.SGD, {"weight_decay": 0.7, "momentum": 0.8, "dampening": 0.3}),
        (torch.optim.SGD, {"weight_decay": 0.7, "momentum": 0.9, "nesterov": True}),
        (torch.optim.AdamW, {"weight_decay": 0.7}),
    ],
)
def test_the_factor_is_what_torch_does_to_weights_without_gradient(optimizer_class, options):
    # With a zero data gradient the weights only decay: w_T = factor·w_0, for any schedule.
    weights = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64, requires_grad=True)
    initial = weights.detach().clone()
    optimizer = optimizer_class([weights], lr=0.05, **options)
    factor = InitialWeightFactor(group_decay(optimizer, optimizer.param_groups[0]))
    total = 60
    for step in range(total):
        lr = _cosine(step, total, base=0.05, minimum=0.001)
        optimizer.param_groups[0]["lr"] = lr
        weights.grad = torch.zeros_like(weights)
        factor.step(lr)
        optimizer.step()
    assert abs(factor.value) < 0.5  # momentum can overshoot below zero: tracked all the same
    torch.testing.assert_close(weights.detach(), factor.value * initial, rtol=1e-12, atol=1e-15)


def test_decoupled_factor_is_the_product_by_hand_under_a_cosine_schedule():
    factor = InitialWeightFactor(GroupDecay("decoupled", 0.1))
    by_hand = 1.0
    for step in range(100):
        lr = _cosine(step, 100, base=0.01)
        factor.step(lr)
        by_hand *= 1 - lr * 0.1
    assert factor.value == pytest.approx(by_hand, rel=1e-15)


def test_a_tensor_learning_rate_keeps_the_factor_a_tensor():
    factor = InitialWeightFactor(GroupDecay("decoupled", 2.0))
    factor.step(torch.tensor(0.1))
    factor.step(torch.tensor(0.1))
    assert isinstance(factor.value, torch.Tensor)
    assert factor.value.item() == pytest.approx(0.64)
    assert factor.state_dict() == {"value": pytest.approx(0.64), "buffer": None}


def test_state_round_trip_continues_the_momentum_recurrence():
    decay = GroupDecay("coupled", 0.5, momentum=0.9, optimizer="SGD")
    whole, first = InitialWeightFactor(decay), InitialWeightFactor(decay)
    for _ in range(5):
        whole.step(0.1)
        first.step(0.1)
    resumed = InitialWeightFactor(decay)
    resumed.load_state_dict(first.state_dict())
    for _ in range(5):
        whole.step(0.1)
        resumed.step(0.1)
    assert resumed.value == whole.value


def test_the_parameter_group_report_shows_tau_with_its_rule():
    from torch import nn

    from wd_lightning import explain_param_groups

    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    report = explain_param_groups(model, weight_decay=0.1)
    adamw = torch.optim.AdamW(report.groups, lr=1e-3)
    lines = report.summary(adamw, steps_per_epoch=50).splitlines()
    assert lines[0].split()[-4:] == ["τ", "(steps)", "τ", "(epochs)"]
    assert lines[1].split()[-2:] == ["10,000", "200"] and lines[2].split()[-2:] == ["-", "-"]
    assert "AdamW decays decoupled: τ = 1/(lr·λ)" in lines[3]
    assert "| decay | 2 | 40 | 0.1 | 0.001 | 10,000 | 200 |" in report.markdown(adamw, 50)
    # Without an optimizer there is no lr, so no τ: the summary stays as it was.
    assert "τ" not in report.summary()

    coupled = explain_param_groups(model, weight_decay=0.1)
    adam = torch.optim.Adam(coupled.groups, lr=1e-3)
    summary = coupled.summary(adam)
    assert "no closed form" in summary.splitlines()[1]
    assert "no closed-form timescale" in summary
