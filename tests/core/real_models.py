"""Real model libraries (timm, transformers, peft) for the grouping tests and the sweep.

Everything here builds models from small configurations on the meta device:
no weights are allocated and nothing is downloaded. The libraries come from
the ``zoo`` extra; callers skip when they are absent.

timm imports torchvision, but PyPI's torchvision wheels are built against
CUDA: beside the CPU torch their compiled operators do not load, and once
installed, torchvision breaks ``import torchmetrics`` (hence every Lightning
test). So the ``zoo`` extra leaves torchvision out, and :func:`import_timm`
lends timm, for the length of its import, a stand-in for the torchvision names
that timm's modules reference at import time (transforms and datasets are only
*used* by timm's data pipeline, which nothing here runs). Building a model
needs none of them except ``FrozenBatchNorm2d``, which timm only swaps in on
request; the stand-in's has no parameters, as torchvision's has none.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import nn

_TORCHVISION_NAMES = (
    "torchvision",
    "torchvision.datasets",
    "torchvision.models",
    "torchvision.models.feature_extraction",
    "torchvision.ops",
    "torchvision.ops.misc",
    "torchvision.transforms",
    "torchvision.transforms.functional",
)


class _Absent(type):
    """Classes standing in for torchvision names: any attribute is another stand-in."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _absent(f"{cls.__name__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torchvision is not installed: {cls.__name__} is a stand-in")


def _absent(name: str) -> type:
    return _Absent(name, (), {"__module__": "torchvision (stand-in)"})


class _FrozenBatchNorm2d(nn.Module):
    """torchvision's FrozenBatchNorm2d: batch norm statistics and affine as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _absent(f"{self.__name__}.{name}")


def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    modules = {}
    for name in _TORCHVISION_NAMES:
        module = _StandInModule(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        modules[name] = module
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2d
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def import_timm() -> types.ModuleType:
    """``timm`` (and its ``optim``, ``utils``), with the real torchvision or else the stand-in."""
    if "timm.utils" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        importlib.import_module("timm.optim")
        importlib.import_module("timm.utils")
        return importlib.import_module("timm")
    stand_in = _stand_in_torchvision()
    sys.modules.update(stand_in)
    try:
        importlib.import_module("timm.optim")  # the models, and timm's own grouping
        importlib.import_module("timm.utils")  # EMA wrappers
        return importlib.import_module("timm")
    finally:
        # timm keeps what it took; nothing else should find a torchvision.
        for name in stand_in:
            sys.modules.pop(name, None)


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    """A timm architecture, randomly initialised on the meta device."""
    timm = import_timm()
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def hf_model(config: Any, model_class: type | None = None) -> nn.Module:
    """A transformers model from ``config`` (built in code), on the meta device.

    ``model_class`` defaults to the library's ``AutoModel`` choice for the config.
    """
    import transformers

    with torch.device("meta"):
        if model_class is None:
            return transformers.AutoModel.from_config(config)
        return model_class(config)


def timm_decayed(model: nn.Module) -> set[str]:
    """Names timm decays: ``param_groups_weight_decay`` with the model's ``no_weight_decay()``."""
    timm = import_timm()
    declared = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = timm.optim.param_groups_weight_decay(model, 0.1, no_weight_decay_list=declared)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return {name for name, p in model.named_parameters() if id(p) in decayed}


def hf_decayed(model: nn.Module) -> set[str]:
    """Names ``Trainer.get_decay_parameter_names`` decays (a method that uses no state)."""
    from transformers import Trainer

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return set(Trainer.get_decay_parameter_names(None, model)) & trainable


# Families of our rule texts, for comparing verdicts with other rules.
_RULE_FAMILIES = (
    ("declared on the tensor", "declared on the tensor"),
    ("declared by", "declared by a module"),
    ("weight-norm magnitude", "weight-norm magnitude"),
    ("(a gain)", "gain with singleton dims"),
    ("(fewer than 2 dims)", "1-D or scalar"),
    ("its layer type decides", "layer weight, whatever its shape or class name"),
    ("bias", "bias"),
    ("norm layer", "norm layer"),
    ("embedding", "embedding"),
    ("-D weight", "weight"),
)


def rule_family(rule: str) -> str:
    """The kind of rule behind one of our verdicts, e.g. ``"gain with singleton dims"``."""
    for marker, family in _RULE_FAMILIES:
        if marker in rule:
            return family
    return "other"


def differences(
    model: nn.Module, reference: set[str], report: Any = None
) -> list[tuple[str, bool, str]]:
    """``(name, we decay, our rule's family)`` for each parameter where ``reference`` differs.

    ``reference`` holds the names (as ``named_parameters`` gives them) that the
    other rule decays; ours (``report``, computed if not given) are matched by
    tensor, so wrappers do not matter.
    """
    from wd_lightning import explain_param_groups

    report = report if report is not None else explain_param_groups(model, 0.1)
    tensor_of = {
        name: parameter
        for group in report.groups
        for name, parameter in zip(group["param_names"], group["params"], strict=True)
    }
    name_of = {id(p): name for name, p in model.named_parameters()}
    found = []
    for decision in report.decisions:
        name = name_of[id(tensor_of[decision.name])]
        if decision.decays != (name in reference):
            found.append((name, decision.decays, rule_family(decision.rule)))
    return found


def small_text(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small decoder configuration's fields, for nested text configs."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        **(overrides or {}),
    }
