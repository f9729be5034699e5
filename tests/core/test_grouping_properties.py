"""Properties of the grouping over randomly built module trees."""

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from wd_lightning import DecayRules, explain_param_groups, param_groups
from wd_lightning.testing.model_zoo import RMSNorm


class _Declares(nn.Module):
    """A module that declares one of its own parameters in no_weight_decay()."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, width))
        self.proj = nn.Linear(width, width)

    def no_weight_decay(self):
        return ["token"]


class _Scalars(nn.Module):
    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones((2,) * ndim))


LEAVES = {
    "linear": lambda w, flag: nn.Linear(w, w, bias=flag),
    "conv": lambda w, flag: nn.Conv1d(w, w, 3, bias=flag),
    "layernorm": lambda w, flag: nn.LayerNorm(w, elementwise_affine=True, bias=flag),
    "batchnorm": lambda w, flag: nn.BatchNorm1d(w),
    "groupnorm": lambda w, flag: nn.GroupNorm(1, w),
    "rmsnorm": lambda w, flag: RMSNorm(w),
    "embedding": lambda w, flag: nn.Embedding(5, w),
    "declares": lambda w, flag: _Declares(w),
    "scalar": lambda w, flag: _Scalars(0 if flag else 1),
    "matrix": lambda w, flag: _Scalars(3 if flag else 2),
}


@st.composite
def module_trees(draw, depth: int = 0) -> nn.Module:
    kinds = list(LEAVES) + (["sequential", "dict", "shared"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    width = draw(st.sampled_from([2, 4]))
    if kind in LEAVES:
        return LEAVES[kind](width, draw(st.booleans()))
    if kind == "shared":  # the same module reachable under two names: tied parameters
        child = draw(module_trees(depth + 1))
        return nn.Sequential(child, nn.Identity(), child)
    children = draw(st.lists(module_trees(depth + 1), min_size=1, max_size=4))
    if kind == "sequential":
        return nn.Sequential(*children)
    return nn.ModuleDict({f"m{i}": child for i, child in enumerate(children)})


@st.composite
def partly_frozen_trees(draw) -> nn.Module:
    model = draw(module_trees())
    parameters = list(model.parameters())
    frozen = draw(st.lists(st.booleans(), min_size=len(parameters), max_size=len(parameters)))
    for parameter, freeze in zip(parameters, frozen, strict=True):
        parameter.requires_grad_(not freeze)
    return model


rule_switches = st.builds(
    DecayRules,
    decay_bias=st.booleans(),
    decay_norm=st.booleans(),
    decay_low_dim=st.booleans(),
    decay_embeddings=st.booleans(),
    use_no_weight_decay=st.booleans(),
)


@given(partly_frozen_trees(), rule_switches)
def test_every_trainable_parameter_is_in_exactly_one_group(model, rules):
    report = explain_param_groups(model, 0.1, rules)
    placed = [id(p) for group in report.groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(placed) == len(set(placed)), "a parameter is in two groups or twice in one"
    assert set(placed) == trainable, "a trainable parameter is missing, or a frozen one included"
    assert len(report.decisions) == len(trainable)


@given(partly_frozen_trees(), rule_switches)
def test_groups_are_disjoint_and_agree_with_the_decisions(model, rules):
    report = explain_param_groups(model, 0.3, rules)
    names = [set(g["param_names"]) for g in report.groups]
    assert not names[0] & names[1]
    for decision in report.decisions:
        assert decision.group == ("decay" if decision.decays else "no_decay")
        assert decision.name in names[0 if decision.decays else 1]
    assert [g["weight_decay"] for g in report.groups] == [0.3, 0.0]


@given(partly_frozen_trees(), rule_switches)
def test_layout_and_order_are_deterministic(model, rules):
    def layout(m):
        return [(g["name"], g["param_names"]) for g in param_groups(m, 0.1, rules)]

    first = layout(model)
    assert [name for name, _ in first] == ["decay", "no_decay"]
    assert layout(model) == first
    assert layout(copy.deepcopy(model)) == first


@given(module_trees())
def test_names_survive_compile(model):
    def layout(m):
        return [(g["name"], g["param_names"]) for g in param_groups(m, 0.1)]

    assert layout(torch.compile(model)) == layout(model)


class _ModuleWrapper(nn.Module):
    """The convention of DDP, EMA and SWA copies: the model under ``.module``, nothing else."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model


@given(module_trees(), rule_switches)
def test_names_and_verdicts_survive_module_wrappers(model, rules):
    def layout(m):
        return [(g["name"], g["param_names"]) for g in param_groups(m, 0.1, rules)]

    assert layout(_ModuleWrapper(_ModuleWrapper(model))) == layout(model)
    assert layout(torch.optim.swa_utils.AveragedModel(model)) == layout(model)
