"""Which parameters decay, in which optimizer group, and why (pure PyTorch).

Every trainable parameter is put in exactly one group by the first rule that
applies to it, in this order:

1. a user ``no_decay`` pattern (glob on the parameter's name)        → no decay
2. a user ``decay`` pattern                                          → decay
3. declared on the tensor: ``_no_weight_decay = True``, or an
   ``_optim`` dict with a ``weight_decay`` (its own group)           → as declared
4. declared by a module's ``no_weight_decay()`` (globs) or
   ``no_weight_decay_keywords()`` (substrings)                       → no decay
5. owned by a torch normalisation layer                              → no decay (``decay_norm``)
6. the own weight or bias of a Linear, convolution or Embedding
   (subclasses too), whatever its shape or class name                → decay (embeddings:
                                                                       ``decay_embeddings``;
                                                                       biases: rule 8)
7. a gain (fewer than 2 non-singleton dims) of a class named ``*Norm*`` → no decay (``decay_norm``)
8. a bias, by name, whatever its shape: ``bias``, ``in_proj_bias``,
   ``bias_k``, ``relative_position_bias_table``, or any tensor held
   by a module named as a bias                                        → no decay (``decay_bias``)
9. a weight-norm magnitude, or any gain: fewer than 2 dimensions
   larger than 1 (``(D,)``, ``(D, 1, 1)``, ``(1, 1, D)``, scalars)   → no decay (``decay_low_dim``)
10. a matrix owned by a class named ``*Embedding*``                  → decay (``decay_embeddings``)
11. anything else: matrices, conv kernels                            → decay

The switch of each kind rule (:class:`DecayRules`) decides for its kind: with
``decay_bias=True`` every bias outside a normalisation layer decays, even a
1-D one. The reasoning: decay limits what a layer can express through the
*size* of its weights; biases, norm gains and other per-channel scalars only
shift or rescale, and shrinking them towards zero fights the normalisation
instead of regularising.
"""

from __future__ import annotations

import fnmatch
import functools
import gc
import itertools
import re
from collections.abc import KeysView
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from torch import nn

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_non_negative,
    check_finite_positive,
)
from wd_lightning.core.param_walk import MAGNITUDE, Registration, Scope, walk
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

_new_tuple = tuple.__new__

_TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Layers whose own weight is a weight whatever its shape or class name: a
# NormedLinear's matrix, a Linear(in, 1) row, a depthwise kernel.
_WEIGHTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,  # Conv*d, ConvTranspose*d, lazy variants
)
_EMBEDDING_LAYERS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
# Custom norms are recognised by class name: RMSNorm, LayerNorm2d, GroupNormAct,
# T5LayerNorm, BatchNormalization... but not Normal or Normalize. A class name
# only vouches for gains: a fused "LayerNormLinear" still has a real matrix.
_NORM_CLASS_NAME = re.compile(r"Norm(?!al)|Normalization")
_EMBEDDING_CLASS_NAME = re.compile(r"Embedding")
# Biases by name, whatever their shape: bias, in_proj_bias, gate_up_proj_bias,
# bias_k, pos_bias_u, r_w_bias, relative_position_bias_table, attention_biases.
_BIAS_NAME = re.compile(r"(?:^|_)bias(?:es)?(?:_|$)")
# Characters that make a no_weight_decay() entry a glob rather than a name.
_GLOB_CHARACTERS = re.compile(r"[*?\[]")
# Per-tensor optimizer settings (S4/Hyena style): parameter._optim = {...}.
_TENSOR_OPTIM = "_optim"
_TENSOR_NO_DECAY = "_no_weight_decay"  # mamba style: parameter._no_weight_decay = True


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
        decay_bias: decay biases too: every bias outside a normalisation
            layer, found by name whatever its shape.
        decay_norm: decay the parameters of normalisation layers too (and the
            gains of classes named like a norm).
        decay_low_dim: decay gains too: parameters with fewer than 2
            dimensions larger than 1, and weight-norm magnitudes.
        decay_embeddings: decay embedding tables (default ``True``, as nanoGPT
            and timm do; ``False`` as some language-model recipes prefer).
        use_no_weight_decay: honour the model's own declarations: submodules'
            ``no_weight_decay()`` and ``no_weight_decay_keywords()``, and
            tensors' ``_no_weight_decay`` and ``_optim`` attributes.
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


class ParamDecision(NamedTuple):
    """Where one parameter went, and the rule that sent it there.

    A named tuple: a report holds one per tensor (tens of thousands on large
    models), and tuples are the cheapest immutable records to build.
    """

    name: str
    group: str
    decays: bool
    rule: str
    shape: tuple[int, ...]
    numel: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _TensorSettings:
    """An ``_optim`` dict declared on tensors: one pair of groups per distinct dict."""

    settings: tuple[tuple[str, Any], ...]

    @property
    def group_name(self) -> str:
        return "_optim(" + ", ".join(f"{key}={value!r}" for key, value in self.settings) + ")"

    @property
    def weight_decay(self) -> float | None:
        value = dict(self.settings).get("weight_decay")
        return None if value is None else float(value)

    def extra(self) -> dict[str, Any]:
        """Everything but weight_decay, copied into both groups (lr, betas...)."""
        return {key: value for key, value in self.settings if key != "weight_decay"}


def _tensor_settings(parameter: nn.Parameter) -> _TensorSettings | None:
    settings = parameter.__dict__.get(_TENSOR_OPTIM)
    if settings is None:
        return None
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise InvalidArgumentError(
            "parameter._optim", settings, "a dict of optimizer settings such as {'lr': 1e-3}"
        )
    forbidden = {"params", "name", "param_names"} & set(settings)
    if forbidden:
        raise InvalidArgumentError(
            "parameter._optim", sorted(forbidden)[0], "optimizer settings, not group structure"
        )
    if "weight_decay" in settings:
        check_finite_non_negative("parameter._optim['weight_decay']", settings["weight_decay"])
    return _TensorSettings(tuple(sorted(settings.items())))


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
        model: any module; compiled, DDP-wrapped, activation-checkpointed,
            EMA/SWA-averaged or PEFT-wrapped models give the same names as the
            bare model.
        weight_decay: λ of the ``decay`` group, a finite number >= 0.
        rules: the rule switches; ``switches`` replace single fields of it,
            e.g. ``decay_embeddings=False``.

    Returns:
        A :class:`ParamGroupsReport`; its ``groups`` are ``decay``, ``no_decay``,
        then ``<name>/decay`` and ``<name>/no_decay`` per override, then the same
        pair per distinct ``_optim`` dict declared on the model's tensors, always
        all of them and in that order, each a dict with ``name``, ``params``,
        ``param_names``, ``weight_decay`` and, for overrides with one, ``lr``
        (``_optim`` groups also carry their other settings).

    Raises:
        InvalidArgumentError: a bad λ or rule, a pattern that matches no
            parameter, a malformed ``_optim`` declaration, or a model whose
            parameters FSDP1 has flattened.

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
    return _group(model, weight_decay, rules, switches, explain=True)


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
    return _group(model, weight_decay, rules, switches, explain=False).groups


def _group(
    model: nn.Module,
    weight_decay: float,
    rules: DecayRules | None,
    switches: dict[str, Any],
    explain: bool,
) -> ParamGroupsReport:
    """The groups, and with ``explain`` one :class:`ParamDecision` per parameter."""
    weight_decay = check_finite_non_negative("weight_decay", weight_decay)
    rules = replace(rules or DecayRules(), **switches) if switches else (rules or DecayRules())

    # The pass allocates one small record per tensor and none of them is
    # cyclic; on a model of tens of thousands of modules a full collection
    # triggered by those allocations costs as much as the pass itself.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _group_without_collection(model, weight_decay, rules, explain)
    finally:
        if collecting:
            gc.enable()


def _group_without_collection(
    model: nn.Module, weight_decay: float, rules: DecayRules, explain: bool
) -> ParamGroupsReport:
    declarations = rules.use_no_weight_decay
    registrations, scopes = walk(model, _declares if declarations else _never)
    trainable = [r for r in registrations if r.parameter.requires_grad]
    frozen: dict[str, None] = {}  # an ordered set
    if len(trainable) < len(registrations):
        frozen = {r.name: None for r in registrations if not r.parameter.requires_grad}
    # The first trainable registration of each tensor, and all of them for tied
    # tensors. A dict built from a zip keeps each key's first position; fewer keys
    # than registrations means tied tensors, sorted out by the slower loop.
    ids = [id(r.parameter) for r in trainable]
    first: dict[int, Registration] = dict(zip(ids, trainable, strict=True))
    tied: dict[int, list[Registration]] = {}
    if len(first) < len(trainable):
        first = {}
        for registration in trainable:
            key = id(registration.parameter)
            kept = first.setdefault(key, registration)
            if kept is not registration:
                tied.setdefault(key, [kept]).append(registration)
    declared = _declared_no_decay(registrations, scopes) if declarations else {}

    groups = _empty_groups(weight_decay, rules)
    index = {group["name"]: group for group in groups}
    patterns = bool(rules.no_decay or rules.decay or rules.overrides)
    unmatched = {("no_decay", p) for p in rules.no_decay} | {("decay", p) for p in rules.decay}
    unmatched |= {("overrides", o.pattern) for o in rules.overrides}
    decisions: list[ParamDecision] = []
    kinds: dict[tuple[Any, ...], tuple[bool, str]] = {}
    # (shape tuple, numel) per distinct shape: a model repeats a few shapes many times.
    sizes: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}
    decay_group, no_decay_group = index[DECAY], index[NO_DECAY]
    # Whether a rule may judge a tensor by its name or its declarations.
    by_name = bool(rules.no_decay or rules.decay or declarations)
    for key, registration in first.items():
        parameter = registration.parameter
        shape = parameter.shape
        aliases = tied.get(key) if tied else None
        if aliases is None:  # the common case, kept cheap
            name = registration.name
            names: list[str] | None = None
            if by_name and (
                rules.no_decay or rules.decay or parameter.__dict__ or name in declared
            ):
                decays, rule = _decide(registration, shape, declared, rules, kinds)
            else:  # no rule can match its name: its kind decides
                decays, rule = _decide_kind(registration, shape, rules, kinds)
        else:
            names = [a.name for a in aliases]
            name = names[0]
            decays, rule = _decide_tied(aliases, declared, rules, kinds)
        prefix = None
        if patterns:
            candidates = names or [name]
            override = next(
                (
                    o
                    for o in rules.overrides
                    if any(fnmatch.fnmatchcase(n, o.pattern) for n in candidates)
                ),
                None,
            )
            prefix = None if override is None else override.group_name
            unmatched -= {
                (kind, p)
                for kind, p in unmatched
                if any(fnmatch.fnmatchcase(n, p) for n in candidates)
            }
        if declarations and parameter.__dict__:
            settings = _tensor_settings(parameter)
            if settings is not None and prefix is not None:
                rule += f"; override {prefix!r} replaces its {settings.group_name}"
            elif settings is not None:
                prefix = settings.group_name
                if f"{prefix}/{DECAY}" not in index:  # a pair of groups per distinct one
                    for group in _declared_groups(weight_decay, settings):
                        groups.append(group)
                        index[group["name"]] = group
        if prefix is None:
            group = decay_group if decays else no_decay_group
        else:
            group = index[f"{prefix}/{DECAY if decays else NO_DECAY}"]
        group["params"].append(parameter)
        group["param_names"].append(name)
        if explain:
            size = sizes.get(shape)
            if size is None:
                size = sizes[shape] = (tuple(shape), parameter.numel())
            others = () if names is None else tuple(dict.fromkeys(names[1:]))
            # tuple.__new__ skips the generated __new__'s argument handling (per tensor).
            decisions.append(
                _new_tuple(
                    ParamDecision, (name, group["name"], decays, rule, size[0], size[1], others)
                )
            )
    if unmatched:
        kind, pattern = sorted(unmatched)[0]
        raise InvalidArgumentError(
            kind, pattern, "a pattern that matches at least one trainable parameter"
        )
    _check_exactly_once(first.keys(), groups)
    return ParamGroupsReport(groups=groups, decisions=decisions, frozen=list(frozen))


def _never(module: nn.Module) -> bool:
    return False


# ---------------------------------------------------------------------- rules
def _decide(
    registration: Registration,
    shape: tuple[int, ...],
    declared: dict[str, str],
    rules: DecayRules,
    kinds: dict[tuple[Any, ...], tuple[bool, str]],
) -> tuple[bool, str]:
    """(decays, rule) for one registration of a parameter; the first rule that applies wins.

    The name-based rules come first; the kind rules depend only on the layer's
    type, the tensor's name, role and shape, so their verdicts are memoised in
    ``kinds`` (a model repeats a few kinds thousands of times). ``shape`` is the
    parameter's, read once by the caller (each read builds a new ``torch.Size``).
    """
    name, parameter = registration.name, registration.parameter
    for pattern in rules.no_decay:
        if fnmatch.fnmatchcase(name, pattern):
            return False, f"no_decay pattern {pattern!r}"
    for pattern in rules.decay:
        if fnmatch.fnmatchcase(name, pattern):
            return True, f"decay pattern {pattern!r}"
    if rules.use_no_weight_decay:
        on_tensor = _declared_on_tensor(parameter) if parameter.__dict__ else None
        if on_tensor is not None:
            return on_tensor
        if name in declared:
            return False, declared[name]
    return _decide_kind(registration, shape, rules, kinds)


def _decide_kind(
    registration: Registration,
    shape: tuple[int, ...],
    rules: DecayRules,
    kinds: dict[tuple[Any, ...], tuple[bool, str]],
) -> tuple[bool, str]:
    """The kind rules (5 onwards), memoised by what decides them."""
    attribute = registration.layer_attribute
    key = (
        type(registration.layer),
        registration.tensor,
        registration.role,
        # Only bias names change a verdict; the substring test spares the regex (and
        # its cache) the thousands of numbered attributes of a long Sequential.
        attribute if "bias" in attribute and _is_bias_name(attribute) else "",
        shape,
    )
    verdict = kinds.get(key)
    if verdict is None:
        verdict = kinds[key] = _kind_verdict(registration, rules)
    return verdict


def _kind_verdict(registration: Registration, rules: DecayRules) -> tuple[bool, str]:
    """The kind rules (5 onwards): what the tensor is, whatever its name in the model."""
    parameter, layer = registration.parameter, registration.layer
    # Each kind below is decided by its own switch: turning one on makes that kind decay.
    role = _role_prefix(registration)
    if isinstance(layer, _TORCH_NORMS):
        rule = f"{role}norm layer ({type(layer).__name__})"
        return _switched(rules.decay_norm, rule, "decay_norm")
    own_tensor = registration.tensor in ("weight", "bias") and registration.role != MAGNITUDE
    if own_tensor and isinstance(layer, (*_WEIGHTED_LAYERS, *_EMBEDDING_LAYERS)):
        return _layer_tensor(registration, rules)
    gain = _non_singleton_dims(parameter) < 2
    if gain and _is_named_norm(type(layer)):
        rule = f"{role}norm layer ({type(layer).__name__})"
        return _switched(rules.decay_norm, rule, "decay_norm")
    if _is_bias_name(registration.tensor):
        rule = "bias" if registration.tensor == "bias" else f"bias by name ({registration.tensor})"
        return _switched(rules.decay_bias, f"{role}{rule}", "decay_bias")
    if not registration.role and _is_bias_name(registration.layer_attribute):
        # A tensor held by a module its parent names as a bias: a bank of bias
        # profiles (``relative_position_bias.proj``). Layers inside such a module
        # (its Linear, its MLP) were judged by their type above.
        rule = f"bias by name (held by {registration.layer_attribute})"
        return _switched(rules.decay_bias, rule, "decay_bias")
    if registration.role == MAGNITUDE or gain:
        return _switched(rules.decay_low_dim, f"{role}{_gain_rule(parameter)}", "decay_low_dim")
    if _EMBEDDING_CLASS_NAME.search(type(layer).__name__):
        rule = f"{role}embedding ({type(layer).__name__})"
        return _switched(rules.decay_embeddings, rule, "decay_embeddings", default=True)
    return True, f"{role}{parameter.ndim}-D weight"


def _layer_tensor(registration: Registration, rules: DecayRules) -> tuple[bool, str]:
    """The own ``weight`` or ``bias`` of a Linear, convolution or embedding layer.

    Its layer type decides, not its shape (a ``Linear(in, 1)`` row) nor its
    class name (a ``NormedLinear``, a ``NormedEmbedding``). An embedding
    table that its parent calls a bias (T5's ``relative_attention_bias``)
    holds biases, and follows the bias rule.
    """
    layer, role = registration.layer, _role_prefix(registration)
    kind = type(layer).__name__
    if registration.tensor == "bias":
        return _switched(rules.decay_bias, f"{role}bias", "decay_bias")
    if isinstance(layer, _EMBEDDING_LAYERS):
        if _is_bias_name(registration.layer_attribute):
            rule = f"{role}bias by name ({registration.layer_attribute}: a table of biases)"
            return _switched(rules.decay_bias, rule, "decay_bias")
        rule = f"{role}embedding ({kind})"
        return _switched(rules.decay_embeddings, rule, "decay_embeddings", default=True)
    rule = f"{role}{registration.parameter.ndim}-D weight"
    if _non_singleton_dims(registration.parameter) < 2 or _is_named_norm(type(layer)):
        rule += f" of {kind} (its layer type decides, not its shape or class name)"
    return True, rule


def _declared_on_tensor(parameter: nn.Parameter) -> tuple[bool, str] | None:
    """The verdict a tensor declares about itself, if any."""
    attributes = parameter.__dict__  # where Python attributes set on a tensor live
    if not attributes:
        return None
    settings = attributes.get(_TENSOR_OPTIM)
    if isinstance(settings, dict) and "weight_decay" in settings:
        value = float(settings["weight_decay"])
        return value > 0, f"declared on the tensor: _optim weight_decay={value:g}"
    if attributes.get(_TENSOR_NO_DECAY, False):
        return False, "declared on the tensor: _no_weight_decay=True"
    return None


def _role_prefix(registration: Registration) -> str:
    if not registration.role:
        return ""
    return f"{registration.role} of {type(registration.layer).__name__}.{registration.tensor}: "


def _gain_rule(parameter: nn.Parameter) -> str:
    if parameter.ndim < 2:
        return f"{parameter.ndim}-D (fewer than 2 dims)"
    larger = _non_singleton_dims(parameter)
    return f"{parameter.ndim}-D {list(parameter.shape)}, {larger} dim larger than 1 (a gain)"


def _non_singleton_dims(parameter: nn.Parameter) -> int:
    return sum(1 for size in parameter.shape if size != 1)


def _switched(decays: bool, rule: str, switch: str, default: bool = False) -> tuple[bool, str]:
    """A kind rule's verdict; the report mentions the switch when it is not at its default."""
    return decays, rule if decays == default else f"{rule}, {switch}={decays}"


def _decide_tied(
    aliases: list[Registration],
    declared: dict[str, str],
    rules: DecayRules,
    kinds: dict[tuple[Any, ...], tuple[bool, str]],
) -> tuple[bool, str]:
    """Decide a parameter registered under several names (tied weights).

    Policy: if the names disagree, the parameter does **not** decay. A tensor
    that one of its roles says must not shrink (a norm gain, a declared
    token) should not be shrunk through another role.
    """
    if len(aliases) == 1:
        return _decide(aliases[0], aliases[0].parameter.shape, declared, rules, kinds)
    verdicts = [(a.name, *_decide(a, a.parameter.shape, declared, rules, kinds)) for a in aliases]
    if len({decays for _, decays, _ in verdicts}) == 1:
        decays, rule = verdicts[0][1], verdicts[0][2]
        names = list(dict.fromkeys(a.name for a in aliases))
        return decays, rule if len(names) == 1 else f"{rule}; tied with {', '.join(names[1:])}"
    detail = "; ".join(f"{name}: {rule}" for name, _, rule in verdicts)
    return False, f"tied, aliases disagree ({detail}): no decay wins"


@functools.lru_cache(maxsize=4096)
def _is_bias_name(name: str) -> bool:
    return _BIAS_NAME.search(name) is not None


@functools.cache
def _is_named_norm(cls: type) -> bool:
    return bool(_NORM_CLASS_NAME.search(cls.__name__))


# --------------------------------------------------------------- declarations
def _declared_no_decay(registrations: list[Registration], scopes: list[Scope]) -> dict[str, str]:
    """Parameter names a module declares not to decay → the rule text naming the declaration.

    ``no_weight_decay()`` entries are globs relative to the declaring module
    (as timm models write them: ``pos_embed``, ``pos_embed.*``); an entry
    naming a submodule covers all of its parameters. Entries of
    ``no_weight_decay_keywords()`` (Swin's convention) match any substring of
    the relative name. Each declaring module is matched once against its own
    parameters only (``scopes`` holds just the declaring modules), so the cost
    is linear in the parameters under them, whatever the number of entries.
    """
    declared: dict[str, str] = {}
    for scope in scopes:
        exact: dict[str, str] = {}
        globs: list[tuple[re.Pattern[str], str]] = []
        keywords: list[tuple[str, str]] = []
        for method_name in ("no_weight_decay", "no_weight_decay_keywords"):
            where = f"{scope.path or type(scope.module).__name__}.{method_name}()"
            for entry in _declarations(scope.module, method_name):
                if not isinstance(entry, str) or not entry:
                    raise InvalidArgumentError(
                        where, entry, "parameter names, globs or keywords (non-empty strings)"
                    )
                rule = f"declared by {where} entry {entry!r}"
                if method_name == "no_weight_decay_keywords":
                    keywords.append((entry, rule))
                elif _GLOB_CHARACTERS.search(entry):
                    globs.append((_glob(entry), rule))
                else:
                    exact.setdefault(entry, rule)
        skip = len(scope.path) + 1 if scope.path else 0
        for registration in registrations[scope.start : scope.end]:
            if registration.name in declared:  # an outer declaration came first
                continue
            rule = _first_declaration(registration.name[skip:], exact, globs, keywords)
            if rule is not None:
                declared[registration.name] = rule
    return declared


def _first_declaration(
    relative: str,
    exact: dict[str, str],
    globs: list[tuple[re.Pattern[str], str]],
    keywords: list[tuple[str, str]],
) -> str | None:
    """The rule of the first entry that covers ``relative``: a name, a glob, a keyword."""
    if exact:
        # The name itself, or a submodule above it: "pos_embed", "blocks.0".
        prefix = relative
        while True:
            if prefix in exact:
                return exact[prefix]
            cut = prefix.rfind(".")
            if cut < 0:
                break
            prefix = prefix[:cut]
    for pattern, rule in globs:
        if pattern.fullmatch(relative):
            return rule
    for keyword, rule in keywords:
        if keyword in relative:
            return rule
    return None


def _declares(module: nn.Module) -> bool:
    if _declaring_methods(type(module)):
        return True
    attributes = module.__dict__  # a method assigned to one instance
    return "no_weight_decay" in attributes or "no_weight_decay_keywords" in attributes


def _declarations(module: nn.Module, method_name: str) -> list[Any]:
    if method_name not in _declaring_methods(type(module)) and method_name not in module.__dict__:
        return []
    method = getattr(module, method_name)
    return list(method()) if callable(method) else []


@functools.cache
def _declaring_methods(cls: type) -> frozenset[str]:
    # Looked up once per class: on instances, nn.Module.__getattr__ makes a miss costly.
    names = ("no_weight_decay", "no_weight_decay_keywords")
    return frozenset(name for name in names if getattr(cls, name, None) is not None)


@functools.lru_cache(maxsize=1024)
def _glob(entry: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(entry))


# --------------------------------------------------------------------- groups
def _new_group(name: str, weight_decay: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "params": [], "param_names": [], "weight_decay": weight_decay, **extra}


def _empty_groups(weight_decay: float, rules: DecayRules) -> list[dict[str, Any]]:
    groups = [_new_group(DECAY, weight_decay, {}), _new_group(NO_DECAY, 0.0, {})]
    for override in rules.overrides:
        decay = weight_decay if override.weight_decay is None else float(override.weight_decay)
        extra = {} if override.lr is None else {"lr": float(override.lr)}
        groups.append(_new_group(f"{override.group_name}/{DECAY}", decay, extra))
        groups.append(_new_group(f"{override.group_name}/{NO_DECAY}", 0.0, extra))
    return groups


def _declared_groups(weight_decay: float, settings: _TensorSettings) -> list[dict[str, Any]]:
    # A declared λ of 0 means "do not decay"; a parameter that decays anyway
    # (a user `decay` pattern) gets the global λ rather than a silent 0.
    decay = settings.weight_decay or weight_decay
    return [
        _new_group(f"{settings.group_name}/{DECAY}", decay, settings.extra()),
        _new_group(f"{settings.group_name}/{NO_DECAY}", 0.0, settings.extra()),
    ]


def _check_exactly_once(trainable: KeysView[int], groups: list[dict[str, Any]]) -> None:
    """Every trainable parameter in exactly one group: a guarantee, so it is verified.

    ``trainable`` comes from the walk, which visits every module's
    ``_parameters`` (the same tensors as ``model.parameters()``, a property the
    tests check against torch), so the check costs one pass over the groups.
    """
    placements = sum(len(group["params"]) for group in groups)
    placed = set(map(id, itertools.chain.from_iterable(group["params"] for group in groups)))
    if placements != len(placed) or placed != trainable:
        raise RuntimeError(
            f"parameter grouping is inconsistent: {placements} placements, "
            f"{len(placed)} distinct, {len(trainable)} trainable parameters"
        )
