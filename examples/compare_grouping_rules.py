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

from torch import nn

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
