"""The vectorised ensemble: each member steps exactly as its own module would."""

import pytest
import torch
from torch import nn

from wd_lightning import LinearRegression, WeightDecayModule
from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.sweep.ensemble import WeightDecayEnsemble
from wd_lightning.training.models import MLP

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01),
}


def _members(optimizer, penalty="optimizer", weight_decays=(0.0, 0.5, 3.0)):
    members = []
    for index, weight_decay in enumerate(weight_decays):
        torch.manual_seed(index)
        members.append(
            WeightDecayModule(
                MLP(6, [5], 2, norm="layer"),
                weight_decay=weight_decay,
                optimizer=optimizer,
                penalty=penalty,
            )
        )
    return members


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(7, 6, generator=generator), torch.randn(7, 2, generator=generator)


def test_forward_is_every_members_forward():
    members = _members(OPTIMIZERS["sgd"])
    ensemble = WeightDecayEnsemble(members)
    inputs, _ = _batch()
    outputs = ensemble(inputs)
    for index, member in enumerate(members):
        torch.testing.assert_close(outputs[index], member(inputs))


@pytest.mark.parametrize("shape", [(5, 200), (2, 3, 200)], ids=["batch", "batch-and-time"])
def test_a_linear_members_outputs_and_gradients_do_not_depend_on_who_shares_the_ensemble(shape):
    # What makes a sweep split over processes equal the one-process sweep, bit for bit.
    torch.manual_seed(0)
    members = [LinearRegression(weight_decay=0.1) for _ in range(40)]
    inputs = torch.randn(*shape)

    def outputs_and_gradients(ensemble):
        outputs = ensemble(inputs)
        outputs.square().sum().backward()
        return outputs.detach(), [p.grad for p in ensemble.stacked]

    everyone = outputs_and_gradients(WeightDecayEnsemble(members))
    for part in (slice(0, 1), slice(37, 40), slice(3, 20), slice(0, 40)):
        outputs, gradients = outputs_and_gradients(WeightDecayEnsemble(members[part]))
        assert torch.equal(outputs, everyone[0][part])
        for gradient, whole in zip(gradients, everyone[1], strict=True):
            assert torch.equal(gradient, whole[part])
    # And each equals its own model, up to float32 rounding.
    torch.testing.assert_close(everyone[0], torch.stack([m.model(inputs) for m in members]))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("penalty", ["optimizer", "loss"])
def test_three_steps_equal_each_members_own_optimizer(name, penalty):
    members = _members(OPTIMIZERS[name], penalty)
    ensemble = WeightDecayEnsemble(members)
    ensemble_optimizer = ensemble.configure_optimizers()
    own = [member.configure_optimizers() for member in members]
    for step in range(3):
        inputs, targets = _batch(step)
        ensemble_optimizer.zero_grad()
        (ensemble.member_losses(inputs, targets) + ensemble.member_penalties()).sum().backward()
        ensemble.configure_gradient_clipping(ensemble_optimizer)
        ensemble_optimizer.step()
        for member, optimizer in zip(members, own, strict=True):
            optimizer.zero_grad()
            loss = member.loss(member(inputs), targets)
            if penalty == "loss":
                loss = loss + member.penalty_term()
            loss.backward()
            optimizer.step()
    for index, member in enumerate(members):
        for name_, param in member.model.named_parameters():
            stacked = ensemble.stacked_parameters()[name_][index]
            torch.testing.assert_close(stacked, param.detach(), rtol=1e-5, atol=1e-6)
    # Different λ led somewhere different: the comparison is not trivially true.
    first, last = (ensemble.stacked_parameters()["layers.0.weight"][i] for i in (0, 2))
    assert not torch.allclose(first, last)


def test_decay_follows_each_members_groups():
    ensemble = WeightDecayEnsemble(_members(OPTIMIZERS["sgd"]))
    assert ensemble.decay_factors["layers.0.weight"].tolist() == [0.0, 0.5, 3.0]
    assert ensemble.decay_factors["layers.0.bias"].tolist() == [0.0, 0.0, 0.0]
    assert ensemble.decay_factors["layers.1.weight"].tolist() == [0.0, 0.0, 0.0]  # LayerNorm


def test_a_non_finite_member_leaves_the_others_untouched():
    members = [LinearRegression(num_inputs=3, weight_decay=wd) for wd in (0.0, 1.0)]
    ensemble = WeightDecayEnsemble(members)
    optimizer = ensemble.configure_optimizers()
    with torch.no_grad():
        ensemble.stacked_parameters()["weight"][0].fill_(float("inf"))
    inputs, targets = torch.randn(4, 3), torch.randn(4, 1)
    losses = ensemble.member_losses(inputs, targets)
    assert not torch.isfinite(losses[0]) and torch.isfinite(losses[1])
    before = ensemble.stacked_parameters()["weight"][1].detach().clone()
    torch.where(torch.isfinite(losses), losses, torch.zeros_like(losses)).sum().backward()
    ensemble.configure_gradient_clipping(optimizer)
    optimizer.step()
    after = ensemble.stacked_parameters()["weight"][1]
    assert torch.isfinite(after).all() and not torch.equal(after, before)


def test_an_optimizer_with_per_tensor_statistics_is_refused():
    # Adafactor factors its second moment per row and column of each tensor.
    members = _members(lambda params: torch.optim.Adafactor(params, lr=0.01))
    with pytest.raises(InvalidArgumentError, match="element-wise optimizer"):
        WeightDecayEnsemble(members).configure_optimizers()


def test_members_of_different_shapes_are_refused():
    members = [WeightDecayModule(nn.Linear(3, 1)), WeightDecayModule(nn.Linear(4, 1))]
    with pytest.raises(InvalidArgumentError, match=r"members\[1\].weight"):
        WeightDecayEnsemble(members)


def test_no_members_is_refused():
    with pytest.raises(InvalidArgumentError, match="members"):
        WeightDecayEnsemble([])


def test_eval_mode_reaches_the_members_batch_norm():
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(WeightDecayModule(MLP(6, [5], 2, norm="batch"), weight_decay=0.1))
    ensemble = WeightDecayEnsemble(members)
    inputs, _ = _batch()
    ensemble.train()
    ensemble(inputs)  # updates the stacked running statistics, as training does
    for member in members:
        member.train()
        member(inputs)
    ensemble.eval()
    outputs = ensemble(inputs)
    for index, member in enumerate(members):
        member.eval()
        torch.testing.assert_close(outputs[index], member(inputs))
        for name, tensor in ensemble.member_state(index).items():
            torch.testing.assert_close(tensor, member.model.state_dict()[name])


def test_adamw_is_decoupled_even_without_the_flag_in_its_defaults():
    # torch < 2.7 builds AdamW without "decoupled_weight_decay" in its defaults.
    def adamw_without_flag(params):
        optimizer = torch.optim.AdamW(params, lr=0.01)
        del optimizer.defaults["decoupled_weight_decay"]
        return optimizer

    members = _members(adamw_without_flag)
    ensemble = WeightDecayEnsemble(members)
    ensemble_optimizer = ensemble.configure_optimizers()
    own = [torch.optim.AdamW(m.param_groups_report.groups, lr=0.01) for m in members]
    inputs, targets = _batch()
    ensemble_optimizer.zero_grad()
    ensemble.member_losses(inputs, targets).sum().backward()
    ensemble.configure_gradient_clipping(ensemble_optimizer)
    ensemble_optimizer.step()
    for member, optimizer in zip(members, own, strict=True):
        member.loss(member(inputs), targets).backward()
        optimizer.step()
    for index, member in enumerate(members):
        torch.testing.assert_close(
            ensemble.stacked_parameters()["layers.0.weight"][index],
            member.model.get_parameter("layers.0.weight").detach(),
        )
