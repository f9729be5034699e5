"""How fast weight decay forgets the initial weights: the timescale τ and the factor left so far.

Each optimizer step with weight decay multiplies the weights by ``1 − η·λ``
before (or beside) the gradient step. Over many steps that compounds to
``∏ₜ(1 − ηₜ·λ) ≈ exp(−t/τ)`` with the **decay timescale**

    τ = 1 / (η·λ)  optimizer steps,

the number of steps after which about 1/e (37 %) of the initial weights is left.
With the book's η = 0.003 and λ = 3, τ = 111 steps, and after its 400 steps
0.991⁴⁰⁰ = 2.7 % of the initial weights survive: the ‖w‖ ≈ 0.37 of the book is
that remainder.

Where the formula holds, and what :class:`InitialWeightFactor` tracks:

* **decoupled** decay (AdamW, or any optimizer with ``decoupled_weight_decay=True``):
  ``w ← (1 − ηλ)·w − η·update``, so the initial weights enter the weights after
  ``t`` steps multiplied by exactly ``∏(1 − ηₛλ)``, whatever the update is.
* **coupled** decay under SGD (``grad ← grad + λ·w``, or λ/2·‖w‖² in the
  loss): the same product, exactly, for every direction the data gradient never
  reaches (the null space of the book's 20 × 200 inputs). With momentum μ the
  decay is carried by the momentum buffer; the tracked factor follows that
  recurrence step by step and τ becomes ``(1 − μ) / ((1 − dampening)·ηλ)``
  once the buffer has built up.
* **coupled** decay under an **adaptive** optimizer (Adam, RMSprop, Adagrad, ...):
  λ·w is divided by the running gradient statistics, element by element, so the
  shrinkage depends on the gradients themselves: **no closed form holds**, and
  nothing is tracked.

Example:
    >>> round(decay_timescale(lr=0.003, weight_decay=3.0), 1)
    111.1
    >>> factor = InitialWeightFactor(GroupDecay(kind="decoupled", weight_decay=3.0))
    >>> for _ in range(400):
    ...     factor.step(0.003)
    >>> round(factor.value, 4)
    0.0269
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_non_negative,
    check_finite_positive,
    check_one_of,
)

__all__ = [
    "DecayKind",
    "GroupDecay",
    "InitialWeightFactor",
    "decay_timescale",
    "format_timescale",
    "group_decay",
]

DecayKind = Literal["none", "coupled", "decoupled", "adaptive"]
"""How a group applies λ: not at all, via SGD's gradient, decoupled, or via an adaptive step."""

# Optimizers whose coupled decay is a plain (momentum) gradient step on λ·w.
_PLAIN_GRADIENT = ("SGD",)
# Optimizers that decay decoupled without saying so in a ``decoupled_weight_decay`` default.
_DECOUPLED = ("AdamW",)

_NO_CLOSED_FORM = "no closed form"


@dataclass(frozen=True)
class GroupDecay:
    """How one optimizer group applies weight decay, as far as the timescale is concerned.

    Args:
        kind: see :data:`DecayKind`.
        weight_decay: λ (0 for ``kind="none"``).
        momentum: SGD's momentum μ (coupled decay only).
        dampening: SGD's dampening (coupled decay only).
        nesterov: SGD's Nesterov momentum (coupled decay only).
        optimizer: the optimizer's class name, for messages.
    """

    kind: DecayKind
    weight_decay: float = 0.0
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    optimizer: str = ""

    def __post_init__(self) -> None:
        check_one_of("kind", self.kind, ("none", "coupled", "decoupled", "adaptive"))
        check_finite_non_negative("weight_decay", self.weight_decay)

    @property
    def has_closed_form(self) -> bool:
        """Whether τ and the factor of the initial weights follow from the learning rates alone."""
        return self.kind in ("coupled", "decoupled")

    def describe(self) -> str:
        """One line saying how this group decays, for reports.

        Example:
            >>> GroupDecay("adaptive", 0.1, optimizer="Adam").describe()
            'Adam applies λ through its adaptive step (coupled): no closed-form timescale'
        """
        if self.kind == "none":
            return "no weight decay"
        if self.kind == "decoupled":
            return f"{self.optimizer or 'the optimizer'} decays decoupled: τ = 1/(lr·λ)"
        if self.kind == "coupled":
            if self.momentum:
                return (
                    f"{self.optimizer or 'SGD'} with momentum {self.momentum:g}: "
                    "τ = (1 − momentum)/((1 − dampening)·lr·λ)"
                )
            return f"{self.optimizer or 'SGD'} decays coupled: τ = 1/(lr·λ)"
        return (
            f"{self.optimizer or 'the optimizer'} applies λ through its adaptive step "
            "(coupled): no closed-form timescale"
        )


def group_decay(
    optimizer: Any, group: dict[str, Any], weight_decay: float | None = None
) -> GroupDecay:
    """How ``group`` of ``optimizer`` decays its weights.

    Args:
        optimizer: a ``torch.optim`` optimizer, or its class.
        group: one of its parameter groups (``weight_decay`` and, for SGD,
            ``momentum``, ``dampening`` and ``nesterov`` are read).
        weight_decay: the λ the group is meant to have, if the optimizer does
            not apply all of it: the part above the group's own
            ``weight_decay`` is taken to come from a λ/2·‖w‖² term in the loss,
            which acts through the gradient (coupled), whatever the optimizer.
            ``None`` means the group's own value.

    Example:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> adamw = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.1)
        >>> group_decay(adamw, adamw.param_groups[0]).kind
        'decoupled'
        >>> adam = torch.optim.Adam([w], lr=1e-3, weight_decay=0.1)
        >>> group_decay(adam, adam.param_groups[0]).kind
        'adaptive'
        >>> sgd = torch.optim.SGD([w], lr=0.003, weight_decay=0.0)
        >>> decay = group_decay(sgd, sgd.param_groups[0], weight_decay=3.0)  # λ in the loss
        >>> decay.kind, decay.weight_decay
        ('coupled', 3.0)
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    name = cls.__name__
    applied = float(group.get("weight_decay", 0.0) or 0.0)
    intended = applied if weight_decay is None else float(weight_decay)
    check_finite_non_negative("weight_decay", intended)
    from_loss = max(intended - applied, 0.0)
    defaults = {} if isinstance(optimizer, type) else getattr(optimizer, "defaults", {})
    # Only optimizers that have the switch read it (a group dict may carry a stale key).
    if "decoupled_weight_decay" in defaults:
        decoupled = bool(group.get("decoupled_weight_decay", defaults["decoupled_weight_decay"]))
    else:
        decoupled = name in _DECOUPLED
    coupled = from_loss + (0.0 if decoupled else applied)
    if intended == 0:
        return GroupDecay("none", optimizer=name)
    if coupled == 0:
        return GroupDecay("decoupled", applied, optimizer=name)
    if name in _PLAIN_GRADIENT and not decoupled:
        return GroupDecay(
            "coupled",
            coupled,
            momentum=float(group.get("momentum", 0.0) or 0.0),
            dampening=float(group.get("dampening", 0.0) or 0.0),
            nesterov=bool(group.get("nesterov", False)),
            optimizer=name,
        )
    # Adaptive optimizers divide λ·w by gradient statistics; unknown ones may do anything.
    return GroupDecay("adaptive", intended, optimizer=name)


def decay_timescale(lr: float, weight_decay: float, decay: GroupDecay | None = None) -> float:
    """τ, in optimizer steps: after about τ steps 1/e of the initial weights is left.

    ``1/(lr·λ)``; with SGD momentum μ and dampening d, ``(1 − μ)/((1 − d)·lr·λ)``.
    ``inf`` when nothing decays.

    Args:
        lr: the learning rate η (a positive number).
        weight_decay: λ.
        decay: the group's rule; ``None`` means plain decay, ``(1 − ηλ)`` per step.

    Raises:
        InvalidArgumentError: a bad lr or λ, or a rule without closed form
            (coupled decay under an adaptive optimizer).

    Example:
        >>> decay_timescale(0.1, 0.0)
        inf
        >>> sgd = GroupDecay("coupled", 5e-4, momentum=0.9, optimizer="SGD")
        >>> round(decay_timescale(0.1, 5e-4, sgd))
        2000
    """
    weight_decay = check_finite_non_negative("weight_decay", weight_decay)
    lr = check_finite_positive("lr", lr)
    if decay is not None and decay.kind == "adaptive":
        raise InvalidArgumentError(
            "decay", decay.optimizer, f"a rule with a closed form: {decay.describe()}"
        )
    if weight_decay == 0 or (decay is not None and decay.kind == "none"):
        return math.inf
    gain = 1.0
    if decay is not None and decay.kind == "coupled" and decay.momentum:
        # The buffer sums λ·w over ~1/(1 − μ) steps: the decay is amplified as the step is.
        gain = (1 - decay.dampening) / (1 - decay.momentum)
    return 1.0 / (lr * weight_decay * gain)


def format_timescale(
    decay: GroupDecay, lr: float | None, steps_per_epoch: int | None
) -> tuple[str, str]:
    """``(τ in steps, τ in epochs)`` as table cells; ``-`` without decay or lr.

    Example:
        >>> format_timescale(GroupDecay("coupled", 3.0, optimizer="SGD"), 0.003, 4)
        ('111', '27.8')
    """
    if decay.kind == "adaptive":
        return _NO_CLOSED_FORM, _NO_CLOSED_FORM
    if decay.kind == "none" or lr is None:
        return "-", "-"
    steps = decay_timescale(lr, decay.weight_decay, decay)
    epochs = "-" if not steps_per_epoch else _count(steps / steps_per_epoch)
    return _count(steps), epochs


def _count(value: float) -> str:
    # Three significant digits below 1000, whole numbers with separators above.
    return f"{value:.3g}" if value < 1e3 else f"{value:,.0f}"


class InitialWeightFactor:
    """The factor by which a group's initial weights have been multiplied so far.

    Call :meth:`step` once per optimizer step with that step's learning rate
    (read from the group *before* the step: a scheduler changes it after).
    Python floats stay Python floats (no device work at all); a tensor
    learning rate (capturable optimizers) keeps the factor a device tensor, so
    that reading it never forces a host synchronisation until it is logged.

    For decoupled decay the factor is exactly what multiplies the initial
    weights; for coupled SGD it is exact in every direction the data gradient
    never reaches, and follows the momentum buffer's recurrence when there is
    one. Rules without a closed form are refused.

    Example:
        >>> factor = InitialWeightFactor(GroupDecay("coupled", 0.5, momentum=0.9, optimizer="SGD"))
        >>> factor.step(0.1); round(factor.value, 6)  # first step: the buffer is the gradient
        0.95
        >>> factor.step(0.1); round(factor.value, 6)  # then 0.9·buffer + λ·w
        0.8575
    """

    def __init__(self, decay: GroupDecay, value: float = 1.0) -> None:
        if not decay.has_closed_form and decay.kind != "none":
            raise InvalidArgumentError(
                "decay", decay.optimizer, f"a rule with a closed form: {decay.describe()}"
            )
        self.decay = decay
        self.value: float | Tensor = float(value)
        # Momentum SGD: the buffer's coefficient, in units of the initial weights.
        self.buffer: float | Tensor | None = None

    def step(self, lr: float | Tensor) -> None:
        """Advance by one optimizer step taken at learning rate ``lr``."""
        decay, weight_decay = self.decay, self.decay.weight_decay
        if decay.kind == "none" or weight_decay == 0:
            return
        if decay.kind == "decoupled" or not decay.momentum:
            self.value = self.value * (1 - lr * weight_decay)
            return
        # torch's SGD: buf ← g on the first step, else μ·buf + (1 − d)·g; with g = λ·w here.
        gradient = weight_decay * self.value
        if self.buffer is None:
            self.buffer = gradient
        else:
            self.buffer = decay.momentum * self.buffer + (1 - decay.dampening) * gradient
        update = gradient + decay.momentum * self.buffer if decay.nesterov else self.buffer
        self.value = self.value - lr * update

    def state_dict(self) -> dict[str, Any]:
        """The factor (and momentum coefficient) as Python floats, for checkpoints."""
        return {
            "value": float(self.value),
            "buffer": None if self.buffer is None else float(self.buffer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values."""
        self.value = float(state["value"])
        self.buffer = None if state.get("buffer") is None else float(state["buffer"])
