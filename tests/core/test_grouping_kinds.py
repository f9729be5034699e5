"""The grouping rule on parameter kinds that real model code writes in many shapes.

Each test builds the smallest module that has the kind, written the way the
libraries named in its docstring write it; tests/core/test_grouping_real_models.py
checks the same kinds on those libraries' own classes.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from wd_lightning import DecayRules, GroupOverride, InvalidArgumentError, explain_param_groups


def decisions(model, **switches):
    return {d.name: d for d in explain_param_groups(model, 0.1, **switches).decisions}


def verdicts(model, **switches) -> dict[str, bool]:
    return {name: d.decays for name, d in decisions(model, **switches).items()}


# --------------------------------------------- 1. the layer type beats the class name
class NormedEmbedding(nn.Embedding):
    """An embedding table normalised in forward (as some language models write it)."""


class NormedLinear(nn.Linear):
    """A linear layer whose rows are normalised in forward."""


class LayerNormLinear(nn.Module):
    """A fused "layer norm + linear": a norm's gain and bias, then a real matrix."""

    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.layer_norm_weight = nn.Parameter(torch.ones(features))
        self.layer_norm_bias = nn.Parameter(torch.zeros(features))
        self.weight = nn.Parameter(torch.randn(out, features))
        self.bias = nn.Parameter(torch.zeros(out))


class WeightNormLinear(nn.Module):
    """Weight normalisation written by hand: a magnitude per row and a direction."""

    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out, 1))
        self.weight_v = nn.Parameter(torch.randn(out, features))


def test_a_norm_in_the_class_name_does_not_stop_an_embedding_or_linear_from_decaying():
    model = nn.ModuleDict({"embed": NormedEmbedding(10, 4), "proj": NormedLinear(4, 3)})
    found = decisions(model)
    assert found["embed.weight"].decays and found["embed.weight"].rule == (
        "embedding (NormedEmbedding)"
    )
    assert found["proj.weight"].decays
    assert "NormedLinear (its layer type decides" in found["proj.weight"].rule
    assert not found["proj.bias"].decays and found["proj.bias"].rule == "bias"


def test_a_class_named_norm_only_exempts_its_gains():
    assert verdicts(LayerNormLinear(4, 3)) == {
        "layer_norm_weight": False,
        "layer_norm_bias": False,
        "weight": True,
        "bias": False,
    }
    found = decisions(WeightNormLinear(4, 3))
    assert found["weight_v"].decays and found["weight_v"].rule == "2-D weight"
    assert not found["weight_g"].decays
    assert found["weight_g"].rule == "norm layer (WeightNormLinear)"


# ------------------------------------------------------ 2. declarations on the tensor
class MambaMixer(nn.Module):
    """mamba-style: the state matrix and skip gain declare themselves non-decaying."""

    def __init__(self) -> None:
        super().__init__()
        self.A_log = nn.Parameter(torch.zeros(6, 4))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(6))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(6, 6)


class S4Kernel(nn.Module):
    """S4/Hyena-style: per-tensor optimizer settings in ``_optim``."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.log_dt = nn.Parameter(torch.zeros(6))
        self.log_dt._optim = {"weight_decay": 0.0, "lr": lr}
        self.B = nn.Parameter(torch.randn(6, 4))
        self.B._optim = {"weight_decay": 0.0, "lr": lr}
        self.C = nn.Parameter(torch.randn(6, 4))
        self.C._optim = {"lr": lr}  # a learning rate only: the rules decide the decay
        self.output = nn.Linear(6, 6)


def test_no_weight_decay_declared_on_a_tensor_is_honoured_and_explained():
    found = decisions(MambaMixer())
    assert not found["A_log"].decays
    assert found["A_log"].rule == "declared on the tensor: _no_weight_decay=True"
    assert found["out_proj.weight"].decays
    assert verdicts(MambaMixer(), use_no_weight_decay=False)["A_log"] is True


def test_optim_declared_on_a_tensor_makes_its_own_groups():
    report = explain_param_groups(S4Kernel(), 0.1)
    names = [g["name"] for g in report.groups]
    zero = "_optim(lr=0.001, weight_decay=0.0)"
    lr_only = "_optim(lr=0.001)"
    assert names == [
        "decay",
        "no_decay",
        f"{zero}/decay",
        f"{zero}/no_decay",
        f"{lr_only}/decay",
        f"{lr_only}/no_decay",
    ]
    by_name = {g["name"]: g for g in report.groups}
    assert by_name[f"{zero}/no_decay"]["param_names"] == ["log_dt", "B"]
    assert by_name[f"{zero}/no_decay"]["lr"] == 1e-3
    assert by_name[f"{zero}/no_decay"]["weight_decay"] == 0.0
    assert by_name[f"{lr_only}/decay"]["param_names"] == ["C"]
    assert by_name[f"{lr_only}/decay"]["weight_decay"] == 0.1
    assert by_name["decay"]["param_names"] == ["output.weight"]
    rule = {d.name: d.rule for d in report.decisions}
    assert rule["B"] == "declared on the tensor: _optim weight_decay=0"
    assert rule["C"] == "2-D weight"
    optimizer = torch.optim.AdamW(report.groups, lr=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-3]


def test_a_user_override_takes_a_declared_tensor_and_says_so():
    rules = DecayRules(overrides=(GroupOverride("B", name="mine", lr=0.5),))
    report = explain_param_groups(S4Kernel(), 0.1, rules)
    decision = next(d for d in report.decisions if d.name == "B")
    assert decision.group == "mine/no_decay"
    assert "override 'mine' replaces its _optim(lr=0.001, weight_decay=0.0)" in decision.rule


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("fast", "a dict of optimizer settings"),
        ({"params": []}, "not group structure"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_a_malformed_optim_declaration_is_an_error(settings, message):
    model = nn.Linear(2, 2)
    model.weight._optim = settings
    with pytest.raises(InvalidArgumentError, match=message):
        explain_param_groups(model, 0.1)


# --------------------------------------------------- 3. declarations by the module
class FourierPositions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(8, 4, 1)


class GlobDeclaringViT(nn.Module):
    """XCiT-style: ``no_weight_decay()`` returns a glob for a whole submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = FourierPositions()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.head = nn.Linear(4, 2)

    def no_weight_decay(self):
        return {"pos_embed.*", "cls_token"}


class SwinStyleStage(nn.Module):
    """Swin-style: ``no_weight_decay_keywords()`` returns substrings of names."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        for block in self.blocks:
            block.relative_position_table = nn.Parameter(torch.zeros(9, 2))

    def no_weight_decay_keywords(self):
        return {"relative_position"}


def test_no_weight_decay_entries_are_globs_relative_to_the_declaring_module():
    model = nn.Sequential(GlobDeclaringViT())
    found = decisions(model)
    rule = "declared by 0.no_weight_decay() entry 'pos_embed.*'"
    assert found["0.pos_embed.token_projection.weight"].rule == rule
    assert found["0.pos_embed.token_projection.bias"].rule == rule
    assert found["0.cls_token"].rule == "declared by 0.no_weight_decay() entry 'cls_token'"
    assert found["0.head.weight"].decays


def test_no_weight_decay_keywords_match_substrings_and_say_which_entry():
    found = decisions(nn.ModuleDict({"stage": SwinStyleStage()}))
    rule = "declared by stage.no_weight_decay_keywords() entry 'relative_position'"
    assert found["stage.blocks.0.relative_position_table"].rule == rule
    assert found["stage.blocks.1.relative_position_table"].rule == rule
    assert found["stage.blocks.0.weight"].decays


def test_a_declaration_that_is_not_a_string_is_an_error():
    class Bad(nn.Linear):
        def no_weight_decay(self):
            return {None}

    with pytest.raises(InvalidArgumentError, match="no_weight_decay"):
        explain_param_groups(Bad(2, 2), 0.1)


# ---------------------------------------- 4. gains are counted by non-singleton dims
class Gains(nn.Module):
    """Per-channel gains and tokens in the layouts real code gives them."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.ones(d, 1, 1))  # ConvNeXt-style, channels first
        self.affine = nn.Parameter(torch.ones(1, 1, d))  # ResMLP's Affine
        self.grn_gamma = nn.Parameter(torch.zeros(1, 1, 1, d))  # ConvNeXt-V2's GRN
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))  # a table: 2 dims larger than 1
        self.score = nn.Linear(d, 1)  # a Linear(in, 1): its weight is (1, d)


def test_gains_with_singleton_dims_do_not_decay_but_layer_weights_do():
    found = decisions(Gains())
    for name in ("layer_scale", "affine", "grn_gamma", "cls_token"):
        assert not found[name].decays, name
        assert "1 dim larger than 1 (a gain)" in found[name].rule
    assert found["pos_embed"].decays
    assert found["score.weight"].decays
    assert "Linear (its layer type decides" in found["score.weight"].rule
    assert verdicts(Gains(), decay_low_dim=True)["layer_scale"] is True


# ------------------------------------------------------------ 5. biases by name
class FusedExperts(nn.Module):
    def __init__(self, experts: int = 3, d: int = 4) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(experts, d, 2 * d))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(experts, 2 * d))
        self.down_proj = nn.Parameter(torch.randn(experts, 2 * d, d))
        self.down_proj_bias = nn.Parameter(torch.zeros(experts, d))


class RelativeAttention(nn.Module):
    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, heads))
        self.attention_biases = nn.Parameter(torch.zeros(heads, 16))
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, 4))
        self.r_w_bias = nn.Parameter(torch.zeros(heads, 4))
        self.relative_attention_bias = nn.Embedding(32, heads)  # T5's bucketed table


BIASES = [
    "experts.gate_up_proj_bias",
    "experts.down_proj_bias",
    "attention.relative_position_bias_table",
    "attention.attention_biases",
    "attention.pos_bias_u",
    "attention.r_w_bias",
    "attention.relative_attention_bias.weight",
    "mha.in_proj_bias",
    "mha.bias_k",
    "mha.bias_v",
    "mha.out_proj.bias",
]


def biased_model() -> nn.Module:
    return nn.ModuleDict(
        {
            "experts": FusedExperts(),
            "attention": RelativeAttention(),
            "mha": nn.MultiheadAttention(4, 2, add_bias_kv=True),
        }
    )


def test_biases_are_found_by_name_whatever_their_shape():
    found = decisions(biased_model())
    for name in BIASES:
        assert not found[name].decays, name
        assert found[name].rule.startswith("bias"), (name, found[name].rule)
    assert found["attention.relative_attention_bias.weight"].rule == (
        "bias by name (relative_attention_bias: a table of biases)"
    )
    assert found["experts.gate_up_proj"].decays and found["mha.in_proj_weight"].decays


class HiddenStateRelativeBias(nn.Module):
    """A bank of bias profiles mixed by a small network (as hidden-state position biases do)."""

    def __init__(self, heads: int = 2, profiles: int = 8) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.zeros(profiles, 16))
        self.linear = nn.Linear(4, heads * profiles)


def test_a_tensor_held_by_a_module_named_as_a_bias_is_a_bias_but_its_layers_are_layers():
    model = nn.ModuleDict(
        {"relative_position_bias": HiddenStateRelativeBias(), "rel_bias": HiddenStateRelativeBias()}
    )
    found = decisions(model)
    profiles = found["relative_position_bias.proj"]
    assert not profiles.decays
    assert profiles.rule == "bias by name (held by relative_position_bias)"
    assert found["rel_bias.proj"].rule == "bias by name (held by rel_bias)"  # its own holder
    assert found["relative_position_bias.linear.weight"].decays  # a Linear, by its type
    assert verdicts(model, decay_bias=True)["relative_position_bias.proj"] is True


def test_decay_bias_decays_every_bias_outside_norm_layers():
    found = decisions(biased_model(), decay_bias=True)
    for name in BIASES:
        assert found[name].decays, name
        assert found[name].rule.endswith("decay_bias=True"), (name, found[name].rule)
    with_norm = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert verdicts(with_norm, decay_bias=True) == {
        "0.weight": True,
        "0.bias": True,
        "1.weight": False,
        "1.bias": False,
    }


# -------------------------------------------------------------- 6. parametrizations
def test_weight_norm_magnitude_is_a_gain_and_direction_a_weight():
    model = nn.Sequential(parametrizations.weight_norm(nn.Conv1d(4, 6, 3), dim=2))
    found = decisions(model)
    magnitude = found["0.parametrizations.weight.original0"]
    direction = found["0.parametrizations.weight.original1"]
    assert not magnitude.decays
    assert magnitude.rule.startswith("weight-norm magnitude of ParametrizedConv1d.weight: ")
    assert direction.decays
    assert direction.rule == "weight-norm direction of ParametrizedConv1d.weight: 3-D weight"
    assert verdicts(model, decay_low_dim=True)["0.parametrizations.weight.original0"] is True


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
def test_old_style_weight_norm_and_spectral_norm_are_explained():
    legacy = nn.Sequential(
        torch.nn.utils.weight_norm(nn.Linear(4, 6)), torch.nn.utils.spectral_norm(nn.Linear(6, 2))
    )
    found = decisions(legacy)
    assert found["0.weight_g"].rule.startswith("weight-norm magnitude of Linear.weight: ")
    assert not found["0.weight_g"].decays
    assert found["0.weight_v"].rule == "weight-norm direction of Linear.weight: 2-D weight"
    assert found["1.weight_orig"].rule == "spectral-norm original of Linear.weight: 2-D weight"
    assert found["1.weight_orig"].decays
    spectral = nn.Sequential(parametrizations.spectral_norm(nn.Linear(6, 2)))
    rule = decisions(spectral)["0.parametrizations.weight.original"].rule
    assert rule == "spectral-norm original of ParametrizedLinear.weight: 2-D weight"


def test_a_module_dict_that_merely_is_called_parametrizations_is_walked_as_modules():
    model = nn.Module()
    model.parametrizations = nn.ModuleDict({"weight": nn.Linear(2, 3)})
    assert decisions(model)["parametrizations.weight.weight"].rule == "2-D weight"


# ---------------------------------------------------------------------- 7. wrappers
class EmaCopy(nn.Module):
    """Any wrapper that keeps the model under ``.module`` and has no parameters itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.register_buffer("updates", torch.zeros(()))


class PeftModel(nn.Module):
    """PEFT's layout: PeftModel.base_model (a tuner) .model (the user's model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.base_model = BaseTuner(model)


class BaseTuner(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def layout(model) -> list[tuple[str, list[str]]]:
    return [(g["name"], g["param_names"]) for g in explain_param_groups(model, 0.1).groups]


@pytest.mark.parametrize(
    "wrap",
    [EmaCopy, PeftModel, torch.optim.swa_utils.AveragedModel],
    ids=["module wrapper", "peft layout", "AveragedModel"],
)
def test_wrappers_keep_the_bare_models_names(wrap):
    bare = GlobDeclaringViT()
    assert layout(wrap(bare)) == layout(bare)


def test_a_module_with_one_child_named_module_and_parameters_of_its_own_is_not_a_wrapper():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(2))

    assert "module.weight" in decisions(Holder())
