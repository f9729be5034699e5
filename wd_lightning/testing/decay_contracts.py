"""The weight-decay rules an optimizer can follow, each stated as a *twin* update.

A contract says what ``weight_decay=λ`` must amount to, by saying how a twin run of the same
optimizer with ``weight_decay=0`` reproduces it: what weights and gradient the twin starts its
step from, and what is done to the twin's result afterwards. That keeps the check independent
of momentum, adaptive scaling or anything else the optimizer does with the gradient.

Named contracts (``η`` is the group's learning rate at this step, ``η₀`` its first one,
``η_max`` the largest one so far, ``w`` the weights, ``g`` the gradient):

=========================  ======================================================================
``"coupled"``              L2: ``g ← g + λ·w`` before anything else (SGD, Adam).
``"decoupled"``            ``w ← (1 − η·λ)·w`` before, and apart from, the step (AdamW).
``"decoupled-after"``      the step first, then ``w ← (1 − η·λ)·w``.
``"independent"``          ``w ← (1 − λ)·w`` before the step: not multiplied by the lr ("fixed").
``"corrected"``            ``w ← (1 − λ·η/η₀)·w`` before the step: decay follows the schedule's
                           multiplier only, as in the AdamW paper.
``"corrected-max"``        ``w ← (1 − λ·η²/η_max)·w`` before the step.
``"proximal"``             the step first, then ``w ← w / (1 + η·λ)``.
``"adaptive"``             ``w ← w − s·λ·w`` with a step size ``s > 0`` of the optimizer's own
                           (e.g. D-Adaptation's ``d·η``), one per tensor and step, fitted.
=========================  ======================================================================

Under ``maximize=True`` the gradient is ascended but decay still pulls towards zero, so the
coupled twin is given ``g − λ·w``. Any other rule is a :class:`DecayContract` built from two
functions of a :class:`DecayStep`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.testing.tolerance import terms_magnitude

__all__ = ["CONTRACTS", "DecayContract", "DecayStep", "contract_named", "held", "variants"]


@dataclass(frozen=True)
class DecayStep:
    """What a contract may use to describe one step of one parameter.

    Attributes:
        weights: the weights before the step (the twin's, which follow the contract).
        grad: the gradient handed to the optimizer with ``weight_decay=λ``.
        lr: the group's learning rate at this step.
        weight_decay: the group's ``λ``.
        initial_lr: the group's learning rate at the first step (``η₀``).
        max_lr: the largest learning rate the group has had so far, this step included.
        step: the step number, starting at 1.
        maximize: whether the optimizer ascends the gradient.
    """

    weights: Tensor
    grad: Tensor
    lr: float
    weight_decay: float
    initial_lr: float
    max_lr: float
    step: int
    maximize: bool


def _unchanged(step: DecayStep) -> tuple[Tensor, Tensor]:
    return step.weights, step.grad


def _as_is(step: DecayStep, twin_result: Tensor) -> Tensor:
    return twin_result


@dataclass(frozen=True)
class DecayContract:
    """A weight-decay rule, stated as what a ``weight_decay=0`` twin must be given and done.

    Args:
        name: short name used in reports, e.g. ``"decoupled"``.
        statement: one sentence saying what the rule is, used in failure messages.
        twin_input: ``(weights, grad)`` the twin starts its step from; default unchanged.
        expected: the expected weights after the step, given the twin's result; default the
            twin's result itself.
        alternatives: other statements of the same rule; the contract holds if any one of
            them (or the main one) holds on every step.

    Example:
        A rule that shrinks the weights by ``1 − 2·η·λ`` before the step:

        >>> double = DecayContract(
        ...     "double",
        ...     "w ← (1 − 2·lr·λ)·w before the step",
        ...     twin_input=lambda s: (s.weights * (1 - 2 * s.lr * s.weight_decay), s.grad),
        ... )
        >>> double.name
        'double'
    """

    name: str
    statement: str
    twin_input: Callable[[DecayStep], tuple[Tensor, Tensor]] = _unchanged
    expected: Callable[[DecayStep, Tensor], Tensor] = _as_is
    alternatives: tuple[DecayContract, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError("name", self.name, "a non-empty string")
        for argument in ("twin_input", "expected"):
            if not callable(getattr(self, argument)):
                raise InvalidArgumentError(argument, getattr(self, argument), "a function")

    def expected_given(self, step: DecayStep, twin_result: Tensor, actual: Tensor) -> Tensor:
        """The expected weights; a fitted contract may use ``actual`` to fit its free scale."""
        return self.expected(step, twin_result)


@dataclass(frozen=True)
class _FittedScaleContract(DecayContract):
    """``w ← w − s·λ·w`` with one positive ``s`` per tensor and step, fitted to the result.

    Whatever the optimizer's own step size is, the decay it applies is then proportional to
    the weights with one factor for the whole tensor; an element-wise or negative factor is
    not this rule.
    """

    def expected_given(self, step: DecayStep, twin_result: Tensor, actual: Tensor) -> Tensor:
        weights = step.weights.detach()
        decay = step.weight_decay * weights.to(torch.float64)
        removed = twin_result.detach().to(torch.float64) - actual.detach().to(torch.float64)
        # Each element's ``removed`` is only known to within the rounding of its own terms. An
        # element whose decay is below that rounding (λ·w = 1e-18 beside an update of 0.3)
        # holds noise, not the step size: fitted with equal weights it would set the scale for
        # an element whose decay is exact (w = 1e-31 with no update), and a correct optimizer
        # would fail there. So every element is weighted by how far its decay stands above its
        # rounding: a least-squares fit in units of that rounding.
        finfo = torch.finfo(twin_result.dtype)
        rounding = finfo.eps * terms_magnitude(weights, twin_result, actual) + finfo.tiny
        # At most 1/eps, since |decay| ≤ |w|: the squares below cannot overflow.
        signal = decay / rounding
        denominator = float((signal * signal).sum())
        scale = float((removed / rounding * signal).sum()) / denominator if denominator > 0 else 0.0
        if not scale > 0:
            # A step size is positive: decay that grows the weights, or a step that skips the
            # decay, is not this rule. Expect the lr-sized decay instead, so that it shows.
            scale = step.lr
        return (twin_result.detach().to(torch.float64) - scale * decay).to(twin_result.dtype)


def _coupled_input(step: DecayStep) -> tuple[Tensor, Tensor]:
    # `add(..., alpha=)` is the operation torch.optim uses, so torch's own optimizers see
    # bit-identical gradients: Adam's normalisation would magnify a one-ulp difference
    # wherever g and λ·w nearly cancel.
    alpha = -step.weight_decay if step.maximize else step.weight_decay
    return step.weights, step.grad.add(step.weights, alpha=alpha)


def _shrunk_before(factor: Callable[[DecayStep], float]) -> Callable[[DecayStep], tuple]:
    def twin_input(step: DecayStep) -> tuple[Tensor, Tensor]:
        return step.weights * (1.0 - factor(step)), step.grad

    return twin_input


def _shrunk_alongside(factor: Callable[[DecayStep], float], name: str) -> tuple[DecayContract, ...]:
    # The same decay written as w ← w − η·u(w) − f·w: the update u is computed from the
    # weights *before* they shrink. When u does not depend on the weights (SGD, Adam) both
    # statements agree; when it does (Adafactor's relative step, trust ratios) an optimizer
    # may compute it before or after shrinking, and both are the same rule.
    return (
        DecayContract(
            f"{name} (update from the weights before decay)",
            "the same, with the step computed from the weights before they are shrunk",
            expected=lambda s, twin: twin - factor(s) * s.weights,
        ),
    )


def _decoupled_like(
    name: str, statement: str, factor: Callable[[DecayStep], float]
) -> DecayContract:
    return DecayContract(
        name,
        statement,
        twin_input=_shrunk_before(factor),
        alternatives=_shrunk_alongside(factor, name),
    )


_CATALOGUE = (
    DecayContract(
        "coupled",
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g + λ·w",
        twin_input=_coupled_input,
    ),
    _decoupled_like(
        "decoupled",
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g after the "
        "weights were multiplied by (1 − lr·λ)",
        lambda s: s.lr * s.weight_decay,
    ),
    DecayContract(
        "decoupled-after",
        "weight_decay=λ must give what weight_decay=0 gives, multiplied afterwards by (1 − lr·λ)",
        expected=lambda s, twin: twin * (1.0 - s.lr * s.weight_decay),
    ),
    _decoupled_like(
        "independent",
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g after the "
        "weights were multiplied by (1 − λ), whatever the lr",
        lambda s: s.weight_decay,
    ),
    _decoupled_like(
        "corrected",
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g after the "
        "weights were multiplied by (1 − λ·lr/initial lr)",
        lambda s: s.weight_decay * s.lr / s.initial_lr,
    ),
    _decoupled_like(
        "corrected-max",
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g after the "
        "weights were multiplied by (1 − λ·lr²/max lr)",
        lambda s: s.weight_decay * s.lr * s.lr / s.max_lr,
    ),
    DecayContract(
        "proximal",
        "weight_decay=λ must give what weight_decay=0 gives, divided afterwards by (1 + lr·λ)",
        expected=lambda s, twin: twin / (1.0 + s.lr * s.weight_decay),
    ),
    _FittedScaleContract(
        "adaptive",
        "weight_decay=λ must give what weight_decay=0 gives, minus s·λ·w with one step size "
        "s > 0 of the optimizer's own per tensor and step",
    ),
)

#: The named contracts, by name, in the order reports list them.
CONTRACTS: Mapping[str, DecayContract] = MappingProxyType({c.name: c for c in _CATALOGUE})


def contract_named(contract: str | DecayContract) -> DecayContract:
    """The contract called ``contract``, or ``contract`` itself if it is one already.

    Raises:
        InvalidArgumentError: if the name is not one of :data:`CONTRACTS`.

    Example:
        >>> contract_named("proximal").statement
        'weight_decay=λ must give what weight_decay=0 gives, divided afterwards by (1 + lr·λ)'
    """
    if isinstance(contract, DecayContract):
        return contract
    if isinstance(contract, str) and contract in CONTRACTS:
        return CONTRACTS[contract]
    raise InvalidArgumentError(
        "coupling", contract, "one of " + ", ".join(map(repr, CONTRACTS)) + ", or a DecayContract"
    )


def variants(contract: DecayContract) -> list[DecayContract]:
    """The contract and its alternative statements, each of which gets its own twin."""
    return [contract, *contract.alternatives]


def held(contract: DecayContract, failed: Mapping[str, object]) -> bool:
    """Whether some statement of ``contract`` is absent from ``failed`` (keyed by name)."""
    return any(variant.name not in failed for variant in variants(contract))
