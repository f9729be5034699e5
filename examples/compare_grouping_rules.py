"""Which parameters decay under our default rule and under three well-known ones.

    python examples/compare_grouping_rules.py

prints the Markdown table shown in docs/grouping.md. The other rules are
re-implemented here from their published descriptions (timm's
``param_groups_weight_decay``, nanoGPT's ``configure_optimizers``, Hugging Face
Trainer's ``get_decay_parameter_names``); they are emulations for comparison,
not those projects' code.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrizations

from wd_lightning import param_groups
from wd_lightning.testing.model_zoo import TinyGPT, WrappedViT, conv_net, mlp_with_batchnorm

Rule = Callable[[nn.Module], set[str]]  # model → names of the parameters that decay


def ours(model: nn.Module) -> set[str]:
    return set(param_groups(model, 0.1)[0]["param_names"])


def timm_like(model: nn.Module) -> set[str]:
    # No decay for ndim <= 1, names ending ".bias", and names the *top-level* model declares.
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {
        name
        for name, p in model.named_parameters()
        if not (p.ndim <= 1 or name.endswith(".bias") or name in declared)
    }


def nanogpt_like(model: nn.Module) -> set[str]:
    # Every parameter with at least 2 dimensions decays.
    return {name for name, p in model.named_parameters() if p.dim() >= 2}


_HF_FORBIDDEN_NAMES = ["bias", "layernorm", "rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def huggingface_like(model: nn.Module) -> set[str]:
    # Parameters outside nn.LayerNorm modules whose names match none of the norm/bias patterns.
    def names(module: nn.Module) -> list[str]:
        found = []
        for child_name, child in module.named_children():
            if isinstance(child, nn.LayerNorm):
                continue
            found += [f"{child_name}.{n}" for n in names(child)]
        found += list(module._parameters)
        return found

    return {
        name
        for name in names(model)
        if not any(re.search(pattern, name.lower()) for pattern in _HF_FORBIDDEN_NAMES)
    }


RULES: dict[str, Rule] = {
    "wd_lightning": ours,
    "timm": timm_like,
    "nanoGPT": nanogpt_like,
    "Hugging Face": huggingface_like,
}


class NormedEmbedding(nn.Embedding):
    """A token table normalised in forward; "Norm" in its name, an embedding by type."""


class KindsOfParameters(nn.Module):
    """Parameter kinds that real model code writes in shapes other rules misread."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.embed = NormedEmbedding(16, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))  # not declared anywhere
        self.layer_scale = nn.Parameter(torch.ones(d, 1, 1))
        self.attn = nn.MultiheadAttention(d, 2, add_bias_kv=True)
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(4, 2 * d))  # fused experts
        self.A_log = nn.Parameter(torch.zeros(d, 4))
        self.A_log._no_weight_decay = True  # mamba-style declaration on the tensor
        self.conv = parametrizations.weight_norm(nn.Conv1d(d, d, 3))
        self.score = nn.Linear(d, 1)


# (what the parameter is, model, its name in that model)
CASES: list[tuple[str, Callable[[], nn.Module], str]] = [
    ("Linear weight", mlp_with_batchnorm, "0.weight"),
    ("Conv kernel", conv_net, "0.weight"),
    ("Linear bias", mlp_with_batchnorm, "0.bias"),
    ("BatchNorm1d weight", mlp_with_batchnorm, "1.weight"),
    ("GroupNorm weight", conv_net, "1.weight"),
    ("LayerNorm weight named `ln_1`", TinyGPT, "blocks.0.ln_1.weight"),
    ("custom RMSNorm weight named `ln_2`", TinyGPT, "blocks.0.ln_2.weight"),
    ("scalar `logit_scale`", TinyGPT, "logit_scale"),
    ("token embedding (tied to the output head)", TinyGPT, "wte.weight"),
    ("`pos_embed` declared by a nested backbone", WrappedViT, "backbone.pos_embed"),
    ("`cls_token` declared by a nested backbone", WrappedViT, "backbone.cls_token"),
    ("`NormedEmbedding` table", KindsOfParameters, "embed.weight"),
    ("undeclared class token `(1, 1, D)`", KindsOfParameters, "cls_token"),
    ("layer scale `(D, 1, 1)`", KindsOfParameters, "layer_scale"),
    ("MultiheadAttention `bias_k` `(1, 1, D)`", KindsOfParameters, "attn.bias_k"),
    ("fused-expert `gate_up_proj_bias` `(E, 2I)`", KindsOfParameters, "gate_up_proj_bias"),
    ("`A_log` with `_no_weight_decay = True`", KindsOfParameters, "A_log"),
    (
        "weight-norm magnitude `(out, 1, 1)`",
        KindsOfParameters,
        "conv.parametrizations.weight.original0",
    ),
    ("`Linear(d, 1)` weight `(1, d)`", KindsOfParameters, "score.weight"),
]


def comparison_table() -> str:
    lines = ["| parameter | " + " | ".join(RULES) + " |", "|---" * (len(RULES) + 1) + "|"]
    for label, build, name in CASES:
        model = build()
        cells = ["decay" if name in rule(model) else "no decay" for rule in RULES.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(comparison_table())
