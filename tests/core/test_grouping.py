"""The grouping rule on models with the parameter kinds other rules get wrong."""

import math

import pytest
import torch
from torch import nn

from wd_lightning import (
    DecayRules,
    GroupOverride,
    InvalidArgumentError,
    WeightDecayModule,
    explain_param_groups,
    param_groups,
)
from wd_lightning.testing.model_zoo import (
    TinyGPT,
    WrappedViT,
    conv_net,
    mlp_with_batchnorm,
)


def placement(model, weight_decay=0.1, **switches) -> dict[str, str]:
    """parameter name → group name."""
    report = explain_param_groups(model, weight_decay, **switches)
    return {d.name: d.group for d in report.decisions}


def decayed(model, **switches) -> list[str]:
    return [name for name, group in placement(model, **switches).items() if group == "decay"]


def test_linear_weight_decays_and_bias_does_not():
    layer = nn.Linear(200, 1)
    decay, no_decay = param_groups(layer, weight_decay=3.0)
    assert decay["name"] == "decay" and decay["weight_decay"] == 3.0
    assert decay["params"] == [layer.weight] and decay["param_names"] == ["weight"]
    assert no_decay["name"] == "no_decay" and no_decay["weight_decay"] == 0.0
    assert no_decay["params"] == [layer.bias] and no_decay["param_names"] == ["bias"]


def test_mlp_with_batchnorm():
    rules = explain_param_groups(mlp_with_batchnorm(), 0.1).decisions
    assert {d.name: d.rule for d in rules} == {
        "0.weight": "2-D weight",
        "0.bias": "bias",
        "1.weight": "norm layer (BatchNorm1d)",
        "1.bias": "norm layer (BatchNorm1d)",
        "3.weight": "2-D weight",
        "3.bias": "bias",
    }


def test_conv_net_with_groupnorm_and_batchnorm():
    assert decayed(conv_net()) == ["0.weight", "3.weight", "8.weight"]
    rules = {d.name: d.rule for d in explain_param_groups(conv_net(), 0.1).decisions}
    assert rules["1.weight"] == "norm layer (GroupNorm)"
    assert rules["4.bias"] == "norm layer (BatchNorm2d)"
    assert rules["0.weight"] == "4-D weight"


def test_gpt_with_tied_embeddings_layernorm_and_custom_rmsnorm():
    model = TinyGPT()
    report = explain_param_groups(model, 0.1)
    by_name = {d.name: d for d in report.decisions}
    # The tied tensor appears once, under its first name, with its alias recorded.
    assert "lm_head.weight" not in by_name
    assert by_name["wte.weight"].aliases == ("lm_head.weight",)
    assert by_name["wte.weight"].group == "decay"
    assert "tied with lm_head.weight" in by_name["wte.weight"].rule
    assert by_name["blocks.0.ln_1.weight"].rule == "norm layer (LayerNorm)"
    assert by_name["blocks.0.ln_2.weight"].rule == "norm layer (RMSNorm)"
    assert by_name["logit_scale"].rule == "0-D (fewer than 2 dims)"
    assert decayed(model) == [
        "wte.weight",
        "wpe.weight",
        "blocks.0.attn.weight",
        "blocks.0.proj.weight",
        "blocks.0.mlp.weight",
        "blocks.1.attn.weight",
        "blocks.1.proj.weight",
        "blocks.1.mlp.weight",
    ]
    ids = [id(p) for g in report.groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    torch.optim.AdamW(report.groups, lr=1e-3)  # no "appears in more than one group"


def test_tied_aliases_that_disagree_do_not_decay_and_the_report_says_why():
    report = explain_param_groups(TinyGPT(), 0.1, decay_embeddings=False)
    decision = next(d for d in report.decisions if d.name == "wte.weight")
    assert decision.group == "no_decay"
    assert "aliases disagree" in decision.rule and "no decay wins" in decision.rule
    assert "lm_head.weight: 2-D weight" in decision.rule
    wpe = next(d for d in report.decisions if d.name == "wpe.weight")
    assert wpe.rule == "embedding (Embedding), decay_embeddings=False"


def test_vit_tokens_declared_by_a_nested_submodule_inside_a_wrapper():
    model = WrappedViT()
    rules = {d.name: d.rule for d in explain_param_groups(model, 0.1).decisions}
    declared = "declared by backbone.no_weight_decay() entry"
    assert rules["backbone.cls_token"] == f"{declared} 'cls_token'"
    assert rules["backbone.pos_embed"] == f"{declared} 'pos_embed'"
    assert rules["backbone.patch_embed.proj.weight"] == "4-D weight"
    assert rules["head.weight"] == "2-D weight"
    # The same model inside our LightningModule keeps the declaration and the names.
    module = WeightDecayModule(model, weight_decay=0.1)
    groups = module.configure_optimizers().param_groups
    assert "backbone.pos_embed" in groups[1]["param_names"]


def test_declarations_can_be_ignored():
    assert "backbone.pos_embed" in decayed(WrappedViT(), use_no_weight_decay=False)


def test_partly_frozen_model_leaves_frozen_parameters_out():
    model = mlp_with_batchnorm()
    model[0].requires_grad_(False)
    report = explain_param_groups(model, 0.1)
    grouped = [n for g in report.groups for n in g["param_names"]]
    assert "0.weight" not in grouped and "0.bias" not in grouped
    assert report.frozen == ["0.weight", "0.bias"]
    assert "(frozen)" in str(report)


def _names(model) -> list[tuple[str, list[str]]]:
    return [(g["name"], g["param_names"]) for g in param_groups(model, 0.1)]


def test_compiled_model_has_the_same_names():
    model = TinyGPT()
    compiled = torch.compile(model)
    assert any(name.startswith("_orig_mod.") for name, _ in compiled.named_parameters())
    assert _names(compiled) == _names(model)


def test_activation_checkpointed_submodules_have_the_same_names():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = TinyGPT()
    expected = _names(model)
    model.blocks[0] = checkpoint_wrapper(model.blocks[0])
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
    assert _names(model) == expected


def test_ddp_wrapped_model_has_the_same_names(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = WrappedViT()
        expected = _names(model)
        wrapped = DistributedDataParallel(model)
        assert _names(wrapped) == expected
        assert explain_param_groups(wrapped, 0.1).decisions[0].name == "backbone.cls_token"
    finally:
        dist.destroy_process_group()


def test_dtensor_parameters_are_judged_by_their_logical_shape(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        layer = nn.Linear(4, 6)
        layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Shard(0)]))
        layer.bias = nn.Parameter(distribute_tensor(layer.bias.detach(), mesh, [Shard(0)]))
        report = explain_param_groups(layer, 0.1)
        assert [(d.name, d.group, d.shape) for d in report.decisions] == [
            ("weight", "decay", (6, 4)),
            ("bias", "no_decay", (6,)),
        ]
    finally:
        dist.destroy_process_group()


def test_fsdp1_flattening_is_refused_with_a_reason():
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's FSDP1 wrapper
        def __init__(self, module):
            super().__init__()
            self._fsdp_wrapped_module = module

    with pytest.raises(InvalidArgumentError, match=r"FSDP1.*FSDP2"):
        param_groups(FullyShardedDataParallel(nn.Linear(2, 2)), 0.1)


@pytest.mark.parametrize("parametrized", [False, True], ids=["plain", "parametrized"])
def test_a_flat_parameter_is_refused_wherever_it_sits(parametrized):
    class FlatParameter(nn.Parameter):  # stands in for FSDP1's flattened storage
        pass

    layer = nn.Linear(2, 2)
    if parametrized:  # the walk's other path: a module with parametrizations
        layer = torch.nn.utils.parametrizations.weight_norm(layer)
    layer.bias = FlatParameter(torch.zeros(2))
    with pytest.raises(InvalidArgumentError, match=r"model='0.bias'.*FSDP1 flat parameters"):
        param_groups(nn.Sequential(layer), 0.1)


def test_user_patterns_come_first():
    model = WrappedViT()
    assert "head.weight" not in decayed(model, no_decay=["head.*"])
    assert "backbone.block.ln_1.weight" in decayed(model, decay=["*.ln_1.weight"])
    rule = {d.name: d.rule for d in explain_param_groups(model, 0.1, no_decay=["head.*"]).decisions}
    assert rule["head.weight"] == "no_decay pattern 'head.*'"


@pytest.mark.parametrize("kind", ["no_decay", "decay"])
def test_a_pattern_that_matches_nothing_is_an_error(kind):
    with pytest.raises(InvalidArgumentError, match=f"^{kind}='heads.\\*'"):
        param_groups(WrappedViT(), 0.1, **{kind: ["heads.*"]})


def test_overrides_make_named_groups_with_their_own_lr_and_lambda():
    model = WrappedViT()
    rules = DecayRules(overrides=(GroupOverride("head.*", name="head", weight_decay=0.5, lr=1e-2),))
    groups = param_groups(model, 0.1, rules)
    assert [g["name"] for g in groups] == ["decay", "no_decay", "head/decay", "head/no_decay"]
    head_decay, head_no_decay = groups[2], groups[3]
    assert head_decay["param_names"] == ["head.weight"] and head_decay["weight_decay"] == 0.5
    assert head_no_decay["param_names"] == ["head.bias"] and head_no_decay["weight_decay"] == 0.0
    assert head_decay["lr"] == head_no_decay["lr"] == 1e-2
    assert "lr" not in groups[0]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1, 1e-2, 1e-2]


def test_override_matching_nothing_and_duplicate_names_are_errors():
    with pytest.raises(InvalidArgumentError, match="overrides"):
        param_groups(nn.Linear(2, 2), 0.1, overrides=[GroupOverride("head.*")])
    with pytest.raises(InvalidArgumentError, match="unique group name"):
        DecayRules(overrides=(GroupOverride("a*", name="x"), GroupOverride("b*", name="x")))
    with pytest.raises(InvalidArgumentError, match="unique group name"):
        DecayRules(overrides=(GroupOverride("a*", name="decay"),))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"lr": 0.0}, "overrides.lr"),
        ({"weight_decay": -1.0}, "overrides.weight_decay"),
        ({"pattern": ""}, "overrides.pattern"),
    ],
)
def test_bad_override_values(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as raised:
        GroupOverride(**{"pattern": "x", **kwargs})
    assert raised.value.argument == argument


def test_a_single_string_instead_of_a_list_is_an_error():
    with pytest.raises(InvalidArgumentError, match="list of patterns"):
        DecayRules(no_decay="head.*")


@pytest.mark.parametrize(
    ("switch", "now_decayed"),
    [
        ("decay_bias", "head.bias"),
        ("decay_norm", "backbone.norm.weight"),
        ("decay_low_dim", "backbone.norm.weight"),
    ],
)
def test_each_rule_can_be_switched(switch, now_decayed):
    model = WrappedViT()
    if switch == "decay_low_dim":  # a 1-D parameter outside any norm layer
        model.scale = nn.Parameter(torch.ones(3))
        now_decayed = "scale"
    assert now_decayed not in decayed(model)
    assert now_decayed in decayed(model, **{switch: True})


def test_layout_is_stable_and_includes_empty_groups():
    first = [(g["name"], g["param_names"]) for g in param_groups(TinyGPT(), 0.1)]
    second = [(g["name"], g["param_names"]) for g in param_groups(TinyGPT(), 0.1)]
    assert first == second
    assert [g["name"] for g in param_groups(nn.Linear(3, 1, bias=False), 0.5)] == [
        "decay",
        "no_decay",
    ]


def test_summary_and_markdown_report():
    report = explain_param_groups(WrappedViT(), 0.05)
    summary = report.summary().splitlines()
    assert summary[0].split() == ["group", "tensors", "elements", "weight_decay", "lr"]
    decay_row = summary[1].split()
    assert decay_row[0] == "decay" and decay_row[3] == "0.05"
    assert int(decay_row[1]) == len(report.groups[0]["params"])
    assert int(decay_row[2].replace(",", "")) == sum(p.numel() for p in report.groups[0]["params"])
    markdown = report.markdown()
    assert (
        "| `backbone.pos_embed` | [1, 5, 16] | no_decay "
        "| declared by backbone.no_weight_decay() entry 'pos_embed' |" in markdown
    )
    optimizer = torch.optim.SGD(report.groups, lr=0.25)
    assert "0.25" in report.summary(optimizer)


@pytest.mark.parametrize("weight_decay", [-0.1, math.nan, math.inf])
def test_bad_weight_decay_is_rejected_with_its_name(weight_decay):
    with pytest.raises(InvalidArgumentError, match="weight_decay="):
        param_groups(nn.Linear(2, 1), weight_decay)


def test_groups_are_accepted_by_torch_optimizers():
    model = TinyGPT()
    for optimizer_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        optimizer = optimizer_class(param_groups(model, 0.2), lr=0.01)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
        assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]
