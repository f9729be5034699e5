"""A model's parameters under canonical names, with what each tensor is (pure PyTorch).

The grouping rule judges a parameter by the layer it belongs to and the role
it plays there, and reports it under the name it has in the bare model. Three
things stand between ``named_parameters()`` and that view, and this module
undoes them in one pass over the module tree (linear in modules + tensors):

* **Wrappers** (``torch.compile``, DDP, activation checkpointing, EMA and SWA
  copies, PEFT) add a path component without adding meaning; canonical names
  skip it, so a pattern written for the bare model keeps working.
* **Parametrizations** move a tensor's storage: ``weight_norm`` stores a
  magnitude and a direction (``parametrizations.weight.original0/1``, or
  ``weight_g``/``weight_v`` in the old hook API), ``spectral_norm`` the
  un-normalised ``original``. Each is tied back to the layer and tensor it
  parametrizes.
* **Scopes**: the parameters under one module occupy one contiguous run of
  the walk, so a module's declarations (``no_weight_decay()``) are resolved
  against its own parameters only, never against the whole model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn
from torch.nn.utils import parametrize

from wd_lightning.core.errors import InvalidArgumentError

__all__ = ["DIRECTION", "MAGNITUDE", "ORIGINAL", "Registration", "Scope", "walk"]

# Roles of a parametrization's stored tensors.
MAGNITUDE = "weight-norm magnitude"
DIRECTION = "weight-norm direction"
ORIGINAL = "spectral-norm original"

# Wrappers that add a path component without adding meaning: the wrapped module
# sits under this attribute, and canonical names skip it. Matched by class name
# (through the MRO, so subclasses count) to avoid importing optional libraries.
_WRAPPER_ATTRIBUTES = {
    "OptimizedModule": "_orig_mod",  # torch.compile
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "ActivationWrapper": "_checkpoint_wrapped_module",  # checkpoint_wrapper, offload_wrapper
    "AveragedModel": "module",  # torch.optim.swa_utils: SWA and EMA copies
    "ModelEma": "module",  # timm's EMA copies
    "ModelEmaV2": "module",
    "ModelEmaV3": "module",
    "PeftModel": "base_model",  # PEFT: PeftModel.base_model (a tuner).model
    "BaseTuner": "model",
    "BaseTunerLayer": "base_layer",  # PEFT: a LoRA layer wraps the original layer
}
# A module with no parameters of its own whose only child is called ``module``
# is a wrapper too, whatever its class (the convention of DDP, EMA, SWA).
_GENERIC_WRAPPER_ATTRIBUTE = "module"
# FSDP1 flattens parameters into 1-D buffers, so neither names nor shapes survive.
_FLATTENING_WRAPPERS = {"FullyShardedDataParallel"}


class Registration(NamedTuple):
    """One place where a parameter is registered, seen as what it is.

    A named tuple: models have tens of thousands of these, and tuples are
    the cheapest records to build.

    Attributes:
        name: canonical name, relative to the model, wrapper components removed.
        local_name: the attribute it is registered under on ``owner``.
        owner: the module whose ``_parameters`` hold it.
        parameter: the tensor.
        layer: the module the tensor belongs to: ``owner``, or for a
            parametrization's stored tensor, the parametrized module.
        tensor: the tensor's name on ``layer`` (``weight`` for
            ``parametrizations.weight.original0``).
        role: ``""`` for a plain tensor, else :data:`MAGNITUDE`,
            :data:`DIRECTION` or :data:`ORIGINAL`.
        layer_attribute: the attribute under which ``layer`` sits in its parent.
    """

    name: str
    local_name: str
    owner: nn.Module
    parameter: nn.Parameter
    layer: nn.Module
    tensor: str
    role: str
    layer_attribute: str


_new_tuple = tuple.__new__
_PARAMETER = nn.Parameter


@dataclass(slots=True)
class Scope:
    """A module at ``path``, whose parameters are ``registrations[start:end]`` of the walk."""

    path: str
    module: nn.Module
    start: int
    end: int = -1


def walk(
    model: nn.Module, scoped: Callable[[nn.Module], bool] = lambda module: True
) -> tuple[list[Registration], list[Scope]]:
    """Every parameter registration of ``model`` in ``named_parameters`` order, and scopes.

    A module reachable under several paths (tied weights) is walked under each,
    so its parameters appear once per path. A :class:`Scope` is recorded for
    each module for which ``scoped(module)`` holds. Raises
    :class:`~wd_lightning.core.errors.InvalidArgumentError` for FSDP1 models.

    Example:
        >>> from torch import nn
        >>> from torch.nn.utils.parametrizations import weight_norm
        >>> registrations, _ = walk(nn.Sequential(weight_norm(nn.Linear(3, 2))))
        >>> [(r.name, r.tensor, r.role) for r in registrations]  # doctest: +NORMALIZE_WHITESPACE
        [('0.bias', 'bias', ''),
         ('0.parametrizations.weight.original0', 'weight', 'weight-norm magnitude'),
         ('0.parametrizations.weight.original1', 'weight', 'weight-norm direction')]
    """
    registrations: list[Registration] = []
    scopes: list[Scope] = []
    # What each ParametrizationList stands for: (layer, tensor, attribute, kinds).
    parametrized: dict[int, tuple[nn.Module, str, str, tuple[str, ...]]] = {}
    # Depth-first, pre-order, without recursion (deep models exceed Python's stack).
    stack: list[tuple[nn.Module, str, str] | Scope] = [(model, "", "")]
    while stack:
        item = stack.pop()
        if isinstance(item, Scope):  # leaving a module: its run of registrations ends here
            item.end = len(registrations)
            continue
        module, path, attribute = item
        if scoped(module):
            scope = Scope(path, module, len(registrations))
            scopes.append(scope)
            stack.append(scope)
        parameters = module._parameters
        if not parameters:
            pass
        elif id(module) in parametrized or module._forward_pre_hooks:
            _register(module, path, attribute, parametrized, registrations)
        else:
            # A plain layer, the common case, inlined because it runs once per tensor:
            # each tensor is the layer's own, and tuple.__new__ skips the keyword
            # handling of the generated __init__.
            prefix = f"{path}." if path else ""
            for local, parameter in parameters.items():
                if parameter is not None:
                    if type(parameter) is not _PARAMETER:
                        _not_flattened(prefix + local, parameter)
                    registrations.append(
                        _new_tuple(
                            Registration,
                            (
                                prefix + local,
                                local,
                                module,
                                parameter,
                                module,
                                local,
                                "",
                                attribute,
                            ),
                        )
                    )
        if module._modules:
            stack.extend(reversed(_children(module, path, attribute, parametrized)))
    return registrations, scopes


def _children(
    module: nn.Module,
    path: str,
    attribute: str,
    parametrized: dict[int, tuple[nn.Module, str, str, tuple[str, ...]]],
) -> list[tuple[nn.Module, str, str]]:
    skip = _wrapped_attribute(module)
    children = []
    seen: set[int] = set()  # as named_children: a module twice under one parent counts once
    for name, child in module._modules.items():
        if child is None or id(child) in seen:
            continue
        seen.add(id(child))
        children.append((child, path if name == skip else f"{path}.{name}" if path else name, name))
    if skip is None and not module._parameters and len(children) == 1:
        child, _, name = children[0]
        if name == _GENERIC_WRAPPER_ATTRIBUTE:
            children = [(child, path, name)]
    parametrizations = module._modules.get("parametrizations")
    if isinstance(parametrizations, nn.ModuleDict):  # torch.nn.utils.parametrize
        for tensor, plist in parametrizations.items():
            if isinstance(plist, parametrize.ParametrizationList):
                kinds = tuple(type(p).__name__ for p in plist)
                parametrized[id(plist)] = (module, tensor, attribute, kinds)
    return children


def _register(
    module: nn.Module,
    path: str,
    attribute: str,
    parametrized: dict[int, tuple[nn.Module, str, str, tuple[str, ...]]],
    registrations: list[Registration],
) -> None:
    """The registrations of a parametrized module, or of one with old-style hooks."""
    target = parametrized.get(id(module))
    prefix = f"{path}." if path else ""
    hooks = _old_style_parametrizations(module) if target is None else {}
    for local_name, parameter in module._parameters.items():
        if parameter is None:
            continue
        name = prefix + local_name
        _not_flattened(name, parameter)
        layer, tensor, role, layer_attribute = module, local_name, "", attribute
        if target is not None:
            layer, tensor, layer_attribute, kinds = target
            role = _parametrization_role(local_name, kinds)
        elif local_name in hooks:
            tensor, role = hooks[local_name]
        registrations.append(
            _new_tuple(
                Registration,
                (name, local_name, module, parameter, layer, tensor, role, layer_attribute),
            )
        )


def _not_flattened(name: str, parameter: nn.Parameter) -> None:
    """An error for an FSDP1 flat parameter (its original names and shapes are gone)."""
    if type(parameter).__name__ == "FlatParameter":
        raise InvalidArgumentError(
            "model",
            name,
            "parameters that are not FSDP1 flat parameters (their original names and "
            "shapes are gone): build the groups before wrapping, or shard with FSDP2",
        )


def _parametrization_role(local_name: str, kinds: tuple[str, ...]) -> str:
    """The role of ``original``/``original<i>`` in a ParametrizationList of ``kinds``."""
    if kinds and kinds[0] == "_WeightNorm":
        return {"original0": MAGNITUDE, "original1": DIRECTION}.get(local_name, "")
    if local_name == "original":
        return ORIGINAL if "_SpectralNorm" in kinds else ""
    return ""


def _old_style_parametrizations(module: nn.Module) -> dict[str, tuple[str, str]]:
    """``{stored name: (tensor, role)}`` from old-style weight_norm/spectral_norm hooks."""
    found: dict[str, tuple[str, str]] = {}
    for hook in module._forward_pre_hooks.values():
        kind = type(hook).__name__
        tensor = getattr(hook, "name", None)
        if not isinstance(tensor, str):
            continue
        if kind == "WeightNorm":
            found[f"{tensor}_g"] = (tensor, MAGNITUDE)
            found[f"{tensor}_v"] = (tensor, DIRECTION)
        elif kind == "SpectralNorm":
            found[f"{tensor}_orig"] = (tensor, ORIGINAL)
    return found


@functools.cache
def _wrapper_attribute_of_class(cls: type) -> str | None:
    for base in cls.__mro__:
        if base.__name__ in _FLATTENING_WRAPPERS:
            raise InvalidArgumentError(
                "model",
                cls.__name__,
                "a model not wrapped by FSDP1, which flattens parameters so that their names "
                "and shapes are lost: build the groups before wrapping, or shard with FSDP2 "
                "(fully_shard), whose DTensor parameters keep their shapes",
            )
        if base.__name__ in _WRAPPER_ATTRIBUTES:
            return _WRAPPER_ATTRIBUTES[base.__name__]
    return None


def _wrapped_attribute(module: nn.Module) -> str | None:
    return _wrapper_attribute_of_class(type(module))
