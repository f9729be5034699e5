"""The grouping rule on real model classes: timm, Hugging Face transformers, PEFT, mambapy.

Models are built from small configurations on the meta device (no weights, no
downloads). The libraries come from the ``zoo`` extra; without it these tests
skip. The full sweep over every architecture is benchmarks/sweep_grouping.py.
"""

import importlib.util
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.core import real_models
from wd_lightning import explain_param_groups

pytestmark = [
    pytest.mark.slow,
    # Upstream noise while building models on the meta device.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

# A representative set: plain ViTs, declared globs and keywords, relative
# position biases, layer scale, GRN, weight-standardised convs, pooling
# transformers, mobile convnets.
TIMM_MODELS = [
    "vit_tiny_patch16_224",
    "xcit_nano_12_p16_224",
    "tiny_vit_5m_224",
    "swin_tiny_patch4_window7_224",
    "convnextv2_atto",
    "nf_resnet26",
    "cait_xxs24_224",
    "mvitv2_tiny",
    "levit_128",
    "efficientnet_b0",
    "mobilenetv3_small_100",
]


def transformers_module():
    return pytest.importorskip("transformers", reason="needs the zoo extra (transformers)")


def timm_model(name: str) -> nn.Module:
    # Not importorskip: timm cannot be imported before real_models lends it torchvision.
    if importlib.util.find_spec("timm") is None:
        pytest.skip("needs the zoo extra (timm)")
    return real_models.timm_model(name)


def hf(config_name: str, model_name: str, **config: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        transformers = transformers_module()
        configuration = getattr(transformers, config_name)(**config)
        return real_models.hf_model(configuration, getattr(transformers, model_name))

    build.__name__ = model_name
    return build


SMALL_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
HF_MODELS = {
    "bert": hf("BertConfig", "BertModel", num_hidden_layers=2, **SMALL_TEXT),
    "gpt2": hf("GPT2Config", "GPT2Model", n_layer=2, n_embd=32, n_head=2),
    "t5": hf("T5Config", "T5Model", num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16),
    "llama": hf(
        "LlamaConfig",
        "LlamaModel",
        num_hidden_layers=2,
        num_key_value_heads=2,
        vocab_size=100,
        **SMALL_TEXT,
    ),
    "gpt_oss": hf(
        "GptOssConfig",
        "GptOssModel",
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        vocab_size=100,
    ),
    "vit": hf("ViTConfig", "ViTModel", num_hidden_layers=2, **SMALL_TEXT),
    "dinov2": hf("Dinov2Config", "Dinov2Model", num_hidden_layers=2, **SMALL_TEXT),
    "swin": hf("SwinConfig", "SwinModel", embed_dim=16, depths=[1, 1], num_heads=[1, 2]),
    "levit": hf("LevitConfig", "LevitModel"),
    "convnextv2": hf("ConvNextV2Config", "ConvNextV2Model", depths=[1, 1, 1, 1]),
    "wav2vec2": hf("Wav2Vec2Config", "Wav2Vec2Model", num_hidden_layers=2, **SMALL_TEXT),
    "wav2vec2_conformer": hf(
        "Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel", num_hidden_layers=2, **SMALL_TEXT
    ),
    "mamba": hf("MambaConfig", "MambaModel", num_hidden_layers=2, hidden_size=32),
    "clip": hf("CLIPConfig", "CLIPModel"),
}


def decisions(model: nn.Module, **switches) -> dict[str, object]:
    return {d.name: d for d in explain_param_groups(model, 0.1, **switches).decisions}


# ------------------------------------------------------------------ every model
def check_exactly_once(model: nn.Module) -> None:
    report = explain_param_groups(model, 0.1)
    placed = [id(p) for group in report.groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(placed) == len(set(placed)) == len(trainable)
    assert set(placed) == trainable
    torch.optim.AdamW(report.groups, lr=1e-3)  # torch's own duplicate check


# Where we and timm may differ, and why we are right (README, "real models").
TIMM_DIFFERENCES = {
    (False, "gain with singleton dims"),  # NF-Net conv gains (out, 1, 1, 1): per-channel scales
    (False, "weight-norm magnitude"),
    (False, "declared by a module"),  # globs and nested declarations timm matches literally
    (False, "bias"),  # 2-D bias tables timm decays by their shape
}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_are_grouped_exactly_once_and_differ_from_timm_only_where_explained(name):
    model = timm_model(name)
    check_exactly_once(model)
    found = real_models.differences(model, real_models.timm_decayed(model))
    unexplained = [d for d in found if (d[1], d[2]) not in TIMM_DIFFERENCES]
    assert not unexplained


# Where we and Trainer.get_decay_parameter_names may differ, and why.
HF_DIFFERENCES = {
    (False, "1-D or scalar"),  # gains, skip scales, logit scales, attention sinks, tokens
    (False, "gain with singleton dims"),  # GRN (1, 1, 1, D), class tokens (1, 1, D)
    (False, "weight-norm magnitude"),
    (False, "norm layer"),  # norms neither LayerNorm nor named like one
    (False, "declared on the tensor"),
}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_models_are_grouped_exactly_once_and_differ_from_the_trainer_only_where_explained(name):
    model = HF_MODELS[name]()
    check_exactly_once(model)
    found = real_models.differences(model, real_models.hf_decayed(model))
    unexplained = [d for d in found if (d[1], d[2]) not in HF_DIFFERENCES]
    assert not unexplained


# ---------------------------------------------------------- 1. layer type first
def test_a_normed_embedding_subclass_keeps_decaying():
    transformers = transformers_module()
    if not hasattr(transformers, "InklingModel"):
        pytest.skip("this transformers has no Inkling model")
    text = {"num_hidden_layers": 2, "vocab_size": 100, "hidden_size": 32}
    config = transformers.InklingConfig(text_config={**real_models.small_text(text)})
    model = real_models.hf_model(config, transformers.InklingModel)
    embedding = model.get_input_embeddings()
    assert "Norm" in type(embedding).__name__ and isinstance(embedding, nn.Embedding)
    name = next(n for n, p in model.named_parameters() if p is embedding.weight)
    decision = decisions(model)[name]
    assert decision.decays and decision.rule == f"embedding ({type(embedding).__name__})"


# ------------------------------------------------ 2. declarations on the tensor
def test_mamba_declarations_on_tensors_are_honoured():
    vim = pytest.importorskip("mambapy.vim", reason="needs the zoo extra (mambapy)")
    with torch.device("meta"):
        model = vim.VMamba(vim.MambaConfig(d_model=16, n_layers=2))
    found = decisions(model)
    for name in ("layers.0.mixer.A_log", "layers.1.mixer.A_log", "layers.0.mixer.D"):
        assert not found[name].decays
        assert found[name].rule == "declared on the tensor: _no_weight_decay=True"
    assert found["layers.0.mixer.in_proj.weight"].decays


# -------------------------------------------------- 3. module declarations as globs
def test_a_glob_declaration_covers_a_whole_positional_encoder():
    model = timm_model("xcit_nano_12_p16_224")
    assert "pos_embed.*" in model.no_weight_decay()
    found = decisions(model)
    encoder = [name for name in found if name.startswith("pos_embed.")]
    assert encoder and all(not found[name].decays for name in encoder)
    assert found["pos_embed.token_projection.weight"].rule == (
        "declared by Xcit.no_weight_decay() entry 'pos_embed.*'"
    )


def test_declarations_hold_inside_a_wrapper_where_timm_loses_them():
    model = nn.ModuleDict({"backbone": timm_model("tiny_vit_5m_224")})
    found = decisions(model)
    biases = [name for name in found if name.endswith("attention_biases")]
    assert biases and all(found[name].rule.startswith("declared by backbone.") for name in biases)


# ------------------------------------------------------- 4. gains of any layout
def test_singleton_padded_gains_do_not_decay_on_real_classes():
    convnext = HF_MODELS["convnextv2"]()
    grn = {n: d for n, d in decisions(convnext).items() if ".grn." in n and "weight" in n}
    assert grn and all(not d.decays and d.shape[:3] == (1, 1, 1) for d in grn.values())
    vit = decisions(HF_MODELS["vit"]())
    assert vit["embeddings.cls_token"].shape == (1, 1, 32)
    assert not vit["embeddings.cls_token"].decays
    assert vit["embeddings.position_embeddings"].decays  # a table: 2 dims larger than 1
    nf = decisions(timm_model("nf_resnet26"))
    assert not nf["stem.conv.gain"].decays and nf["stem.conv.gain"].shape[1:] == (1, 1, 1)
    assert nf["stem.conv.weight"].decays


# --------------------------------------------------------- 5. biases by name
def test_biases_of_any_shape_follow_the_bias_rule_on_real_classes():
    models = {
        "gpt_oss": (
            "layers.0.mlp.experts.gate_up_proj_bias",
            "layers.0.mlp.experts.down_proj_bias",
        ),
        "wav2vec2_conformer": ("encoder.layers.0.self_attn.pos_bias_u",),
        "t5": ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
        "swin": (
            "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table",
        ),
    }
    for key, names in models.items():
        model = HF_MODELS[key]()
        default, switched = decisions(model), decisions(model, decay_bias=True)
        for name in names:
            assert default[name].rule.startswith("bias"), (name, default[name].rule)
            assert not default[name].decays and switched[name].decays, name
    attention = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    switched = decisions(attention, decay_bias=True)
    assert all(switched[n].decays for n in ("in_proj_bias", "bias_k", "bias_v", "out_proj.bias"))


# -------------------------------------------------------- 6. parametrizations
def test_weight_norm_of_a_real_positional_convolution_is_explained():
    model = HF_MODELS["wav2vec2"]()
    found = decisions(model)
    prefix = "encoder.pos_conv_embed.conv.parametrizations.weight."
    magnitude, direction = found[prefix + "original0"], found[prefix + "original1"]
    assert magnitude.rule.startswith("weight-norm magnitude of ParametrizedConv1d.weight")
    assert not magnitude.decays
    assert direction.rule == "weight-norm direction of ParametrizedConv1d.weight: 3-D weight"
    assert direction.decays


# ----------------------------------------------------------------- 7. wrappers
def layout(model: nn.Module) -> list[tuple[str, list[str]]]:
    return [(g["name"], g["param_names"]) for g in explain_param_groups(model, 0.1).groups]


def test_peft_lora_model_keeps_the_bare_models_names():
    peft = pytest.importorskip("peft", reason="needs the zoo extra (peft)")
    model = HF_MODELS["llama"]()
    bare_names = {name for name, _ in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["q_proj"], r=2))
    assert any(n.startswith("base_model.model.") for n, _ in wrapped.named_parameters())
    report = explain_param_groups(wrapped, 0.1)
    # The frozen base weights keep their bare names; the adapters sit beside them.
    assert set(report.frozen) == bare_names
    adapters = [d.name for d in report.decisions]
    assert adapters and all(".q_proj.lora_" in name for name in adapters)
    assert all(not name.startswith("base_model") for name in adapters)


@pytest.mark.parametrize("wrapper", ["timm ModelEmaV3", "torch AveragedModel"])
def test_ema_wrappers_keep_the_bare_models_names(wrapper):
    if importlib.util.find_spec("timm") is None:
        pytest.skip("needs the zoo extra (timm)")
    timm = real_models.import_timm()
    model = timm.create_model("test_vit", pretrained=False)  # on the CPU: EMA needs a device
    expected = layout(model)
    if wrapper == "timm ModelEmaV3":
        wrapped = timm.utils.ModelEmaV3(model)
    else:
        wrapped = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    for parameter in wrapped.parameters():  # EMA copies are frozen; train them to compare
        parameter.requires_grad_(True)
    assert layout(wrapped) == expected
