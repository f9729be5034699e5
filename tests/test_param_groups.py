import math

import pytest
import torch
from torch import nn

from wd_lightning import InvalidArgumentError, param_groups
from wd_lightning.param_groups import decays


def test_linear_weight_decays_and_bias_does_not():
    layer = nn.Linear(200, 1)
    decay, no_decay = param_groups(layer, weight_decay=3.0)
    assert decay["name"] == "decay" and decay["weight_decay"] == 3.0
    assert decay["params"] == [layer.weight] and decay["param_names"] == ["weight"]
    assert no_decay["name"] == "no_decay" and no_decay["weight_decay"] == 0.0
    assert no_decay["params"] == [layer.bias] and no_decay["param_names"] == ["bias"]


def test_nested_biases_are_recognised_by_name():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["param_names"] == ["0.weight", "2.weight"]
    assert no_decay["param_names"] == ["0.bias", "2.bias"]


def test_every_trainable_parameter_once_and_frozen_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert len(grouped) == len(set(grouped)) == 3


def test_shared_parameter_appears_once():
    first = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(first, nn.Linear(4, 4, bias=False))
    model[1].weight = first.weight
    (decay, _) = param_groups(model, 0.1)
    assert decay["param_names"] == ["0.weight"]


def test_both_groups_present_even_when_empty():
    groups = param_groups(nn.Linear(3, 1, bias=False), 0.5)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[1]["params"] == []


def test_groups_are_accepted_by_torch_optimizers():
    model = nn.Linear(5, 1)
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        optimizer = optimizer_class(param_groups(model, 0.2), lr=0.01)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
        assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]


@pytest.mark.parametrize("weight_decay", [-0.1, math.nan, math.inf])
def test_bad_weight_decay_is_rejected_with_its_name(weight_decay):
    with pytest.raises(InvalidArgumentError, match="weight_decay="):
        param_groups(nn.Linear(2, 1), weight_decay)


def test_decays_rule():
    p = nn.Parameter(torch.zeros(1))
    assert decays("layer.weight", p)
    assert not decays("bias", p)
    assert not decays("encoder.layer.bias", p)
    assert decays("biased_weight", p)
