"""Split a model's parameters into named weight-decay groups.

This is pure PyTorch: no Lightning import, so it can be used with any training
loop. The rule follows the article: weights decay, biases do not.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wd_lightning.errors import check_finite_non_negative

__all__ = ["DECAY", "NO_DECAY", "decays", "param_groups"]

DECAY = "decay"
NO_DECAY = "no_decay"


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Whether the parameter called ``name`` belongs in the decay group.

    A bias only shifts the output; shrinking it towards zero adds bias to the
    fit without reducing the model's capacity to overfit, so it is not decayed.

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(3, 1)
        >>> decays("weight", layer.weight), decays("bias", layer.bias)
        (True, False)
    """
    return not (name == "bias" or name.endswith(".bias"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Build optimizer parameter groups ``"decay"`` (λ = ``weight_decay``) and ``"no_decay"`` (0).

    Both groups are always present, in that order, even when empty, so an
    optimizer's saved state lines up with the groups on resume. Frozen
    parameters (``requires_grad=False``) are left out, and a parameter shared
    by several modules appears once.

    Args:
        model: any module.
        weight_decay: λ for the decay group; a finite number >= 0.

    Returns:
        A list of dicts with keys ``name``, ``params``, ``param_names`` and
        ``weight_decay``, accepted by every ``torch.optim`` optimizer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> groups = param_groups(nn.Linear(200, 1), weight_decay=3.0)
        >>> [(g["name"], g["param_names"], g["weight_decay"]) for g in groups]
        [('decay', ['weight'], 3.0), ('no_decay', ['bias'], 0.0)]
        >>> optimizer = torch.optim.SGD(groups, lr=0.003)
    """
    weight_decay = check_finite_non_negative("weight_decay", weight_decay)
    groups: dict[str, dict[str, Any]] = {
        DECAY: {"name": DECAY, "params": [], "param_names": [], "weight_decay": weight_decay},
        NO_DECAY: {"name": NO_DECAY, "params": [], "param_names": [], "weight_decay": 0.0},
    }
    # named_parameters() yields each shared tensor once, under its first name.
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group = groups[DECAY if decays(name, parameter) else NO_DECAY]
        group["params"].append(parameter)
        group["param_names"].append(name)
    return list(groups.values())
