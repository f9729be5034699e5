"""Which parameters decay, in which optimizer group, and why (pure PyTorch).

Every trainable parameter is put in exactly one group by the first rule that
applies to it, in this order:

1. a user ``no_decay`` pattern (glob on the parameter's name)  → no decay
2. a user ``decay`` pattern                                    → decay
3. named by some submodule's ``no_weight_decay()``             → no decay (``use_no_weight_decay``)
4. owned by a normalisation layer                              → no decay (``decay_norm``)
5. a bias                                                      → no decay (``decay_bias``)
6. fewer than 2 dimensions (gains, scales, scalars)            → no decay (``decay_low_dim``)
7. owned by an embedding layer                                 → decay (``decay_embeddings``)
8. anything else: matrices, conv kernels                       → decay

The switch of rules 4–7 (:class:`DecayRules`) decides for its kind: with
``decay_bias=True`` every bias decays, even though it is also 1-D. The reasoning: decay
limits what a layer can express through the *size* of its weights; biases,
norm gains and other per-channel scalars only shift or rescale, and shrinking
them towards zero fights the normalisation instead of regularising.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_non_negative,
    check_finite_positive,
)
from wd_lightning.core.timescale import format_timescale, group_decay

__all__ = [
    "DECAY",
    "NO_DECAY",
    "DecayRules",
    "GroupOverride",
    "ParamDecision",
    "ParamGroupsReport",
    "explain_param_groups",
    "param_groups",
]

DECAY = "decay"
NO_DECAY = "no_decay"

# Wrappers that add a path component without adding meaning: the wrapped module
# sits under this attribute, and canonical names skip it.
_WRAPPER_ATTRIBUTES = {
    "OptimizedModule": "_orig_mod",  # torch.compile
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "ActivationWrapper": "_checkpoint_wrapped_module",  # checkpoint_wrapper, offload_wrapper
}
# FSDP1 flattens parameters into 1-D buffers, so neither names nor shapes survive.
_FLATTENING_WRAPPERS = {"FullyShardedDataParallel"}

_TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Custom norms are recognised by class name: RMSNorm, LayerNorm2d, GroupNormAct,
# T5LayerNorm, BatchNormalization... but not Normal or Normalize.
_NORM_CLASS_NAME = re.compile(r"Norm(?!al)|Normalization")
_EMBEDDING_CLASS_NAME = re.compile(r"Embedding")


@dataclass(frozen=True)
class GroupOverride:
    """Parameters matching ``pattern`` go to groups of their own.

    Each override makes two groups, ``<name>/decay`` and ``<name>/no_decay``
    (the decay rules still decide between them), so a parameter that must not
    decay never does just because it got its own learning rate.

    Args:
        pattern: glob on parameter names (``*`` also matches dots), e.g. ``"head.*"``.
        name: group-name prefix; defaults to ``pattern``.
        weight_decay: λ of ``<name>/decay``; defaults to the global λ.
        lr: learning rate of both groups; defaults to the optimizer's.
    """

    pattern: str
    name: str | None = None
    weight_decay: float | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise InvalidArgumentError("overrides.pattern", self.pattern, "a non-empty glob")
        if self.weight_decay is not None:
            check_finite_non_negative("overrides.weight_decay", self.weight_decay)
        if self.lr is not None:
            check_finite_positive("overrides.lr", self.lr)

    @property
    def group_name(self) -> str:
        return self.name or self.pattern


@dataclass(frozen=True)
class DecayRules:
    """Switches for the grouping rules; the defaults are the recommended rule.

    Args:
        decay_bias: decay biases too.
        decay_norm: decay the parameters of normalisation layers too.
        decay_low_dim: decay parameters with fewer than 2 dimensions too.
        decay_embeddings: decay embedding tables (default ``True``, as nanoGPT
            and timm do; ``False`` as some language-model recipes prefer).
        use_no_weight_decay: honour ``no_weight_decay()`` methods of submodules.
        no_decay: extra glob patterns of parameters that must not decay.
        decay: glob patterns of parameters that must decay whatever the rules say.
        overrides: per-pattern λ / lr, each adding a pair of groups.
    """

    decay_bias: bool = False
    decay_norm: bool = False
    decay_low_dim: bool = False
    decay_embeddings: bool = True
    use_no_weight_decay: bool = True
    no_decay: tuple[str, ...] = ()
    decay: tuple[str, ...] = ()
    overrides: tuple[GroupOverride, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Configs deliver lists; freeze them so a rules object can be shared safely.
        for name in ("no_decay", "decay", "overrides"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise InvalidArgumentError(name, value, "a list of patterns, not one string")
            object.__setattr__(self, name, tuple(value))
        names = [override.group_name for override in self.overrides]
        duplicates = sorted(
            {n for n in names if names.count(n) > 1} | ({DECAY, NO_DECAY} & set(names))
        )
        if duplicates:
            raise InvalidArgumentError("overrides.name", duplicates[0], "a unique group name")


@dataclass(frozen=True)
class ParamDecision:
    """Where one parameter went, and the rule that sent it there."""

    name: str
    group: str
    decays: bool
    rule: str
    shape: tuple[int, ...]
    numel: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Registration:
    name: str  # canonical: relative to the model, wrapper prefixes removed
    local_name: str  # as registered on its owning module
    owner: nn.Module
    parameter: nn.Parameter


@dataclass
class ParamGroupsReport:
    """The optimizer groups, and for every parameter the rule that placed it.

    ``groups`` is what :func:`param_groups` returns; ``decisions`` has one
    :class:`ParamDecision` per trainable parameter, ``frozen`` the names left out.
    """

    groups: list[dict[str, Any]]
    decisions: list[ParamDecision]
    frozen: list[str]

    def rows(self, optimizer: Any = None) -> list[tuple[str, int, int, float, str]]:
        """``(group, tensors, elements, weight_decay, lr)`` per group, lr from ``optimizer``."""
        actual = optimizer.param_groups if optimizer is not None else self.groups
        rows = []
        for group, used in zip(self.groups, actual, strict=True):
            lr = used.get("lr")
            rows.append(
                (
                    group["name"],
                    len(group["params"]),
                    sum(p.numel() for p in group["params"]),
                    group["weight_decay"],
                    "optimizer default" if lr is None else f"{float(lr):g}",
                )
            )
        return rows

    def timescales(
        self, optimizer: Any, steps_per_epoch: int | None = None
    ) -> list[tuple[str, str]]:
        """``(τ in steps, τ in epochs)`` per group at ``optimizer``'s current learning rates.

        τ = 1/(lr·λ) optimizer steps (see :mod:`wd_lightning.core.timescale`):
        ``-`` for groups that do not decay, ``no closed form`` where an
        adaptive optimizer applies λ through its gradient (coupled).
        """
        cells = []
        for group, used in zip(self.groups, optimizer.param_groups, strict=True):
            decay = group_decay(optimizer, used, weight_decay=group["weight_decay"])
            lr = used.get("lr")
            cells.append(
                format_timescale(decay, None if lr is None else float(lr), steps_per_epoch)
            )
        return cells

    def summary(self, optimizer: Any = None, steps_per_epoch: int | None = None) -> str:
        """A compact table: group, tensors, elements, λ, lr, and with an optimizer the timescale τ.

        τ is in optimizer steps, and in epochs when ``steps_per_epoch`` is given.
        """
        header = ["group", "tensors", "elements", "weight_decay", "lr"]
        body = [[g, f"{t}", f"{e:,}", f"{wd:g}", lr] for g, t, e, wd, lr in self.rows(optimizer)]
        notes = []
        if optimizer is not None:
            header.append("τ (steps)")
            if steps_per_epoch:
                header.append("τ (epochs)")
            for row, (steps, epochs) in zip(
                body, self.timescales(optimizer, steps_per_epoch), strict=True
            ):
                row += [steps, epochs] if steps_per_epoch else [steps]
            notes = [f"τ: {line}" for line in self._timescale_notes(optimizer)]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            for row in [header, *body]
        ]
        return "\n".join([*(line.rstrip() for line in lines), *notes])

    def markdown(self, optimizer: Any = None, steps_per_epoch: int | None = None) -> str:
        """The summary and the per-parameter decisions as Markdown (TensorBoard's text tab)."""
        if optimizer is None:
            lines = ["| group | tensors | elements | weight_decay | lr |", "|---|---|---|---|---|"]
            lines += [
                f"| {g} | {t} | {e:,} | {wd:g} | {lr} |" for g, t, e, wd, lr in self.rows(optimizer)
            ]
        else:
            lines = [
                "| group | tensors | elements | weight_decay | lr | τ (steps) | τ (epochs) |",
                "|---|---|---|---|---|---|---|",
            ]
            timescales = self.timescales(optimizer, steps_per_epoch)
            lines += [
                f"| {g} | {t} | {e:,} | {wd:g} | {lr} | {steps} | {epochs} |"
                for (g, t, e, wd, lr), (steps, epochs) in zip(
                    self.rows(optimizer), timescales, strict=True
                )
            ]
            lines += ["", *self._timescale_notes(optimizer)]
        lines += ["", "| parameter | shape | group | rule |", "|---|---|---|---|"]
        for d in self.decisions:
            lines.append(f"| `{d.name}` | {list(d.shape)} | {d.group} | {d.rule} |")
        lines += [
            f"| `{name}` | | (frozen, left out) | requires_grad=False |" for name in self.frozen
        ]
        return "\n".join(lines)

    def _timescale_notes(self, optimizer: Any) -> list[str]:
        """What τ means here, once per distinct rule among the decayed groups."""
        rules = {
            group_decay(optimizer, used, weight_decay=group["weight_decay"]).describe(): None
            for group, used in zip(self.groups, optimizer.param_groups, strict=True)
            if group["weight_decay"] and group["params"]
        }
        if not rules:
            return []
        meaning = "optimizer steps until 1/e of the initial weights is left, at the current lr"
        return [f"{meaning}; {'; '.join(rules)}"]

    def __str__(self) -> str:
        width = max((len(d.name) for d in self.decisions), default=0)
        lines = [self.summary(), ""]
        lines += [f"{d.name:<{width}}  {d.group:<10}  {d.rule}" for d in self.decisions]
        lines += [f"{name:<{width}}  {'(frozen)':<10}  requires_grad=False" for name in self.frozen]
        return "\n".join(lines)


def explain_param_groups(
    model: nn.Module, weight_decay: float, rules: DecayRules | None = None, **switches: Any
) -> ParamGroupsReport:
    """Group ``model``'s trainable parameters and record why each went where it did.

    Args:
        model: any module; compiled, DDP-wrapped or activation-checkpointed
            models give the same names as the bare model.
        weight_decay: λ of the ``decay`` group, a finite number >= 0.
        rules: the rule switches; ``switches`` replace single fields of it,
            e.g. ``decay_embeddings=False``.

    Returns:
        A :class:`ParamGroupsReport`; its ``groups`` are ``decay``, ``no_decay``,
        then ``<name>/decay`` and ``<name>/no_decay`` per override, always all of
        them and in that order, each a dict with ``name``, ``params``,
        ``param_names``, ``weight_decay`` and, for overrides with one, ``lr``.

    Raises:
        InvalidArgumentError: a bad λ or rule, a pattern that matches no
            parameter, or a model whose parameters FSDP1 has flattened.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
        >>> report = explain_param_groups(model, weight_decay=0.1)
        >>> print(report.summary())
        group     tensors  elements  weight_decay  lr
        decay     2        40        0.1           optimizer default
        no_decay  4        25        0             optimizer default
        >>> [(d.name, d.rule) for d in report.decisions][:3]
        [('0.weight', '2-D weight'), ('0.bias', 'bias'), ('1.weight', 'norm layer (LayerNorm)')]
    """
    weight_decay = check_finite_non_negative("weight_decay", weight_decay)
    rules = replace(rules or DecayRules(), **switches) if switches else (rules or DecayRules())

    registrations = list(_registrations(model))
    by_parameter: dict[int, list[_Registration]] = {}
    frozen: dict[str, None] = {}  # an ordered set
    for registration in registrations:
        if not registration.parameter.requires_grad:
            frozen[registration.name] = None
            continue
        by_parameter.setdefault(id(registration.parameter), []).append(registration)
    declared = (
        _declared_no_decay(model, [r.name for r in registrations])
        if rules.use_no_weight_decay
        else {}
    )

    groups = _empty_groups(weight_decay, rules)
    index = {group["name"]: group for group in groups}
    unmatched = {("no_decay", p) for p in rules.no_decay} | {("decay", p) for p in rules.decay}
    unmatched |= {("overrides", o.pattern) for o in rules.overrides}
    decisions = []
    for aliases in by_parameter.values():
        names = [a.name for a in aliases]
        decays, rule = _decide_tied(aliases, declared, rules)
        override = next(
            (o for o in rules.overrides if any(fnmatch.fnmatchcase(n, o.pattern) for n in names)),
            None,
        )
        unmatched -= {
            (kind, p) for kind, p in unmatched if any(fnmatch.fnmatchcase(n, p) for n in names)
        }
        base = DECAY if decays else NO_DECAY
        group_name = base if override is None else f"{override.group_name}/{base}"
        parameter = aliases[0].parameter
        index[group_name]["params"].append(parameter)
        index[group_name]["param_names"].append(names[0])
        decisions.append(
            ParamDecision(
                name=names[0],
                group=group_name,
                decays=decays,
                rule=rule,
                shape=tuple(parameter.shape),
                numel=parameter.numel(),
                aliases=tuple(dict.fromkeys(names[1:])),
            )
        )
    if unmatched:
        kind, pattern = sorted(unmatched)[0]
        raise InvalidArgumentError(
            kind, pattern, "a pattern that matches at least one trainable parameter"
        )
    _check_exactly_once(model, groups)
    return ParamGroupsReport(groups=groups, decisions=decisions, frozen=list(frozen))


def param_groups(
    model: nn.Module, weight_decay: float, rules: DecayRules | None = None, **switches: Any
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``model``: ``decay`` (λ), ``no_decay`` (0), overrides.

    The groups of :func:`explain_param_groups`, accepted by every
    ``torch.optim`` optimizer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> groups = param_groups(nn.Linear(200, 1), weight_decay=3.0)
        >>> [(g["name"], g["param_names"], g["weight_decay"]) for g in groups]
        [('decay', ['weight'], 3.0), ('no_decay', ['bias'], 0.0)]
        >>> optimizer = torch.optim.SGD(groups, lr=0.003)
    """
    return explain_param_groups(model, weight_decay, rules, **switches).groups


# ---------------------------------------------------------------------- rules
def _decide(
    registration: _Registration, declared: dict[str, str], rules: DecayRules
) -> tuple[bool, str]:
    """(decays, rule) for one registration of a parameter; the first rule that applies wins."""
    name, owner, parameter = registration.name, registration.owner, registration.parameter
    for pattern in rules.no_decay:
        if fnmatch.fnmatchcase(name, pattern):
            return False, f"no_decay pattern {pattern!r}"
    for pattern in rules.decay:
        if fnmatch.fnmatchcase(name, pattern):
            return True, f"decay pattern {pattern!r}"
    if name in declared:
        return False, f"declared by {declared[name]}.no_weight_decay()"
    # Each kind below is decided by its own switch: turning one on makes that kind decay.
    if _is_norm(owner):
        return _switched(rules.decay_norm, f"norm layer ({type(owner).__name__})", "decay_norm")
    if registration.local_name == "bias":
        return _switched(rules.decay_bias, "bias", "decay_bias")
    if parameter.ndim < 2:
        rule = f"{parameter.ndim}-D (fewer than 2 dims)"
        return _switched(rules.decay_low_dim, rule, "decay_low_dim")
    if _is_embedding(owner):
        rule = f"embedding ({type(owner).__name__})"
        return _switched(rules.decay_embeddings, rule, "decay_embeddings", default=True)
    return True, f"{parameter.ndim}-D weight"


def _switched(decays: bool, rule: str, switch: str, default: bool = False) -> tuple[bool, str]:
    """A kind rule's verdict; the report mentions the switch when it is not at its default."""
    return decays, rule if decays == default else f"{rule}, {switch}={decays}"


def _decide_tied(
    aliases: list[_Registration], declared: dict[str, str], rules: DecayRules
) -> tuple[bool, str]:
    """Decide a parameter registered under several names (tied weights).

    Policy: if the names disagree, the parameter does **not** decay. A tensor
    that one of its roles says must not shrink (a norm gain, a declared
    token) should not be shrunk through another role.
    """
    verdicts = [(a.name, *_decide(a, declared, rules)) for a in aliases]
    if len({decays for _, decays, _ in verdicts}) == 1:
        decays, rule = verdicts[0][1], verdicts[0][2]
        names = list(dict.fromkeys(a.name for a in aliases))
        return decays, rule if len(names) == 1 else f"{rule}; tied with {', '.join(names[1:])}"
    detail = "; ".join(f"{name}: {rule}" for name, _, rule in verdicts)
    return False, f"tied, aliases disagree ({detail}): no decay wins"


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_NORMS) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or bool(
        _EMBEDDING_CLASS_NAME.search(type(module).__name__)
    )


# ------------------------------------------------------------------ traversal
def _wrapped_attribute(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls.__name__ in _FLATTENING_WRAPPERS:
            raise InvalidArgumentError(
                "model",
                type(module).__name__,
                "a model not wrapped by FSDP1, which flattens parameters so that their names "
                "and shapes are lost: build the groups before wrapping, or shard with FSDP2 "
                "(fully_shard), whose DTensor parameters keep their shapes",
            )
        if cls.__name__ in _WRAPPER_ATTRIBUTES:
            return _WRAPPER_ATTRIBUTES[cls.__name__]
    return None


def _modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(canonical path, module)`` for every module, shared ones under each of their paths."""
    yield prefix, model
    skip = _wrapped_attribute(model)
    for name, child in model.named_children():
        path = prefix if name == skip else f"{prefix}.{name}" if prefix else name
        yield from _modules(child, path)


def _registrations(model: nn.Module) -> Iterator[_Registration]:
    for path, module in _modules(model):
        for local_name, parameter in module._parameters.items():
            if parameter is None:
                continue
            if type(parameter).__name__ == "FlatParameter":
                raise InvalidArgumentError(
                    "model",
                    f"{path}.{local_name}" if path else local_name,
                    "parameters that are not FSDP1 flat parameters (their original names and "
                    "shapes are gone): build the groups before wrapping, or shard with FSDP2",
                )
            name = f"{path}.{local_name}" if path else local_name
            yield _Registration(name, local_name, module, parameter)


def _declared_no_decay(model: nn.Module, parameter_names: list[str]) -> dict[str, str]:
    """Parameter names declared by ``no_weight_decay()`` methods → the declaring module's path.

    Each module's names are relative to that module (as timm models write
    them), so a declaration survives any wrapper around it. A declared name
    may also be a submodule's, covering all of its parameters.
    """
    declared: dict[str, str] = {}
    for path, module in _modules(model):
        method = getattr(module, "no_weight_decay", None)
        if not callable(method):
            continue
        for relative in method():
            full = f"{path}.{relative}" if path else relative
            for name in parameter_names:
                if name == full or name.startswith(full + "."):
                    declared.setdefault(name, path or type(model).__name__)
    return declared


# --------------------------------------------------------------------- groups
def _empty_groups(weight_decay: float, rules: DecayRules) -> list[dict[str, Any]]:
    def group(name: str, decay: float, lr: float | None) -> dict[str, Any]:
        built: dict[str, Any] = {
            "name": name,
            "params": [],
            "param_names": [],
            "weight_decay": decay,
        }
        if lr is not None:
            built["lr"] = float(lr)
        return built

    groups = [group(DECAY, weight_decay, None), group(NO_DECAY, 0.0, None)]
    for override in rules.overrides:
        decay = weight_decay if override.weight_decay is None else float(override.weight_decay)
        groups.append(group(f"{override.group_name}/{DECAY}", decay, override.lr))
        groups.append(group(f"{override.group_name}/{NO_DECAY}", 0.0, override.lr))
    return groups


def _check_exactly_once(model: nn.Module, groups: list[dict[str, Any]]) -> None:
    """Every trainable parameter in exactly one group: a guarantee, so it is verified."""
    placed = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(placed) != len(set(placed)) or set(placed) != trainable:
        raise RuntimeError(
            f"parameter grouping is inconsistent: {len(placed)} placements, "
            f"{len(set(placed))} distinct, {len(trainable)} trainable parameters"
        )
