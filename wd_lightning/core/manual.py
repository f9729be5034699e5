"""The optimizer updates of the weight-decay article, written out by hand.

Each function performs one step for one parameter tensor and returns ``(new_param, new_state)``
without touching its inputs, so a reader can hold it next to the equations:

* SGD with coupled decay, the article's equation: the penalty ``λ/2·‖w‖²`` adds ``λ·w`` to the
  gradient, and a plain step becomes ``w ← (1 − ηλ)·w − η·∇L``.
* Adam with coupled decay (L2): ``λ·w`` joins the gradient *before* the moment estimates, so
  the adaptive scaling also rescales the decay.
* AdamW with decoupled decay: ``w ← (1 − ηλ)·w`` happens apart from the moments. As in
  ``torch.optim.AdamW``, ``λ`` is multiplied by the current learning rate ``η``.

The operations follow the order ``torch.optim`` uses, so the results agree with PyTorch's to a
few units in the last place; the property tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_non_negative,
    check_in_range,
)

__all__ = [
    "AdamState",
    "SGDState",
    "adam_step",
    "adamw_step",
    "decay_factor",
    "l2_penalty",
    "sgd_step",
]


@dataclass(frozen=True)
class SGDState:
    """What SGD remembers between steps for one parameter.

    Attributes:
        momentum_buffer: the running velocity ``b``; ``None`` before the first step with
            momentum, because PyTorch starts the buffer at the first gradient rather than at zero.
    """

    momentum_buffer: Tensor | None = None


@dataclass(frozen=True)
class AdamState:
    """What Adam and AdamW remember between steps for one parameter.

    Attributes:
        step: how many updates have been taken; drives the bias corrections.
        exp_avg: first-moment estimate ``m``.
        exp_avg_sq: second-moment estimate ``v``.
    """

    step: int
    exp_avg: Tensor
    exp_avg_sq: Tensor

    @classmethod
    def initial(cls, param: Tensor) -> AdamState:
        """Zero moments shaped like ``param``, as Adam starts.

        Example:
            >>> import torch
            >>> AdamState.initial(torch.ones(2)).step
            0
        """
        return cls(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))


def decay_factor(lr: float, weight_decay: float) -> float:
    """The factor ``1 − ηλ`` that shrinks the weights once per step.

    Args:
        lr: learning rate ``η``.
        weight_decay: decay coefficient ``λ``.

    Returns:
        ``1 − lr·weight_decay``; the weights shrink towards zero while it lies in ``[0, 1)``.

    Example:
        The article's experiment, ``η = 0.003`` and ``λ = 3``:

        >>> round(decay_factor(0.003, 3.0), 6)
        0.991
    """
    _require_non_negative(lr=lr, weight_decay=weight_decay)
    return 1.0 - lr * weight_decay


def l2_penalty(param: Tensor, weight_decay: float) -> Tensor:
    """The penalty ``λ/2·‖w‖²`` whose gradient is exactly ``λ·w``.

    Args:
        param: the weights ``w``.
        weight_decay: decay coefficient ``λ``.

    Returns:
        A scalar tensor; add it to the data loss to get coupled weight decay through autograd.

    Example:
        >>> import torch
        >>> w = torch.tensor([3.0, 4.0], requires_grad=True)
        >>> l2_penalty(w, 2.0).backward()
        >>> w.grad
        tensor([6., 8.])
    """
    _require_non_negative(weight_decay=weight_decay)
    # The ½ makes the gradient λ·w rather than 2λ·w, matching `weight_decay=λ` in torch.optim.
    return 0.5 * weight_decay * param.pow(2).sum()


def sgd_step(
    param: Tensor,
    grad: Tensor,
    state: SGDState | None = None,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> tuple[Tensor, SGDState]:
    """One step of SGD with coupled weight decay, as ``torch.optim.SGD`` takes it.

    With ``d = ±g + λ·w`` (the sign flips the gradient only, under ``maximize``):

    * no momentum: ``w ← w − η·d = (1 − ηλ)·w − η·g``;
    * momentum ``μ``: ``b ← d`` on the first step, later ``b ← μ·b + (1 − τ)·d``, and
      ``w ← w − η·b``; with ``nesterov`` the step uses ``d + μ·b`` instead of ``b``.

    Decay enters before momentum, so the velocity carries it too.

    Args:
        param: current weights ``w`` (not modified).
        grad: gradient ``g`` of the data loss (not modified).
        state: state returned by the previous step; ``None`` for the first step.
        lr: learning rate ``η ≥ 0``.
        weight_decay: coupled decay coefficient ``λ ≥ 0``.
        momentum: momentum ``μ ≥ 0``.
        dampening: dampening ``τ`` of the gradient in the velocity, from 0 to 1.
        nesterov: use Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        maximize: ascend instead of descend; the decay still pulls towards zero.

    Returns:
        The new weights and the state for the next step.

    Raises:
        InvalidArgumentError: if an argument lies outside the range stated above, or
            ``grad`` does not match ``param`` in shape.

    Example:
        The article's update with ``η = 0.003`` and ``λ = 3``: the weight shrinks by the factor
        0.991 before the gradient step.

        >>> import torch
        >>> w = torch.tensor([1.0], dtype=torch.float64)
        >>> g = torch.tensor([0.5], dtype=torch.float64)
        >>> new_w, _ = sgd_step(w, g, lr=0.003, weight_decay=3.0)
        >>> new_w
        tensor([0.9895], dtype=torch.float64)
        >>> torch.allclose(new_w, 0.991 * w - 0.003 * g)
        True
    """
    _require_matching(param=param, grad=grad)
    _require_non_negative(lr=lr, weight_decay=weight_decay, momentum=momentum)
    check_in_range("dampening", dampening, 0.0, 1.0)
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise InvalidArgumentError(
            "nesterov",
            nesterov,
            f"momentum > 0 and dampening == 0 with it (got momentum={momentum}, "
            f"dampening={dampening})",
        )
    state = SGDState() if state is None else state

    direction = -grad if maximize else grad
    if weight_decay != 0.0:
        # Coupled decay: the penalty's gradient λ·w joins the data gradient before anything else.
        direction = direction + weight_decay * param

    buffer = state.momentum_buffer
    if momentum != 0.0:
        if buffer is None:
            # PyTorch seeds the velocity with the first direction, undamped.
            buffer = direction.clone()
        else:
            buffer = momentum * buffer + (1.0 - dampening) * direction
        direction = direction + momentum * buffer if nesterov else buffer

    return param - lr * direction, SGDState(momentum_buffer=buffer)


def adam_step(
    param: Tensor,
    grad: Tensor,
    state: AdamState | None = None,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[Tensor, AdamState]:
    """One step of Adam with coupled (L2) weight decay, as ``torch.optim.Adam`` takes it.

    The decay term ``λ·w`` is added to the gradient and then goes through the moments::

        d = ±g + λ·w
        m ← β₁·m + (1 − β₁)·d,   v ← β₂·v + (1 − β₂)·d²
        w ← w − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)

    so weights with a history of large gradients are decayed *less*: this is the behaviour AdamW
    was introduced to fix.

    Args:
        param: current weights ``w`` (not modified).
        grad: gradient ``g`` of the data loss (not modified).
        state: state returned by the previous step; ``None`` for the first step.
        lr: learning rate ``η ≥ 0``.
        betas: moment coefficients ``(β₁, β₂)``, each in ``[0, 1)``.
        eps: denominator guard ``ε ≥ 0``.
        weight_decay: coupled decay coefficient ``λ ≥ 0``.
        maximize: ascend instead of descend; the decay still pulls towards zero.

    Returns:
        The new weights and the state for the next step.

    Raises:
        InvalidArgumentError: if an argument lies outside the range stated above, or
            ``grad`` does not match ``param`` in shape.

    Example:
        A first Adam step moves each weight by about ``lr``, whatever the gradient's size:

        >>> import torch
        >>> w, g = torch.tensor([1.0, 1.0]), torch.tensor([1e-3, 1e3])
        >>> new_w, state = adam_step(w, g, lr=0.1)
        >>> new_w
        tensor([0.9000, 0.9000])
        >>> state.step
        1
    """
    _require_adam_arguments(param, grad, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    decayed = _signed(grad, maximize)
    if weight_decay != 0.0:
        decayed = decayed + weight_decay * param
    return _adam_update(param, decayed, state, lr=lr, betas=betas, eps=eps)


def adamw_step(
    param: Tensor,
    grad: Tensor,
    state: AdamState | None = None,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    maximize: bool = False,
) -> tuple[Tensor, AdamState]:
    """One step of AdamW with decoupled weight decay, as ``torch.optim.AdamW`` takes it.

    The weights are first shrunk by ``1 − ηλ``; the Adam update then uses the bare gradient::

        w ← (1 − ηλ)·w
        m ← β₁·m + (1 − β₁)·(±g),   v ← β₂·v + (1 − β₂)·g²
        w ← w − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)

    The shrink factor uses the *current* ``η``, so the decay follows a learning-rate schedule.
    The AdamW paper multiplies ``λ`` by the schedule multiplier only; the two agree when
    ``λ_paper = η_base·λ_torch``.

    Args:
        param: current weights ``w`` (not modified).
        grad: gradient ``g`` of the data loss (not modified).
        state: state returned by the previous step; ``None`` for the first step.
        lr: learning rate ``η ≥ 0``.
        betas: moment coefficients ``(β₁, β₂)``, each in ``[0, 1)``.
        eps: denominator guard ``ε ≥ 0``.
        weight_decay: decoupled decay coefficient ``λ ≥ 0`` (torch's default is 0.01).
        maximize: ascend instead of descend; the decay still pulls towards zero.

    Returns:
        The new weights and the state for the next step.

    Raises:
        InvalidArgumentError: if an argument lies outside the range stated above, or
            ``grad`` does not match ``param`` in shape.

    Example:
        With a zero gradient the moments stay zero and only the decay acts:

        >>> import torch
        >>> w = torch.tensor([2.0], dtype=torch.float64)
        >>> new_w, _ = adamw_step(w, torch.zeros(1, dtype=torch.float64), lr=0.1, weight_decay=0.5)
        >>> new_w
        tensor([1.9000], dtype=torch.float64)
    """
    _require_adam_arguments(param, grad, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    # Decoupled: shrink first, then the moments see only the data gradient (torch's order).
    shrunk = param * decay_factor(lr, weight_decay) if weight_decay != 0.0 else param
    return _adam_update(shrunk, _signed(grad, maximize), state, lr=lr, betas=betas, eps=eps)


def _adam_update(
    param: Tensor,
    direction: Tensor,
    state: AdamState | None,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> tuple[Tensor, AdamState]:
    """The moment update and step shared by Adam and AdamW, in torch's order of operations."""
    state = AdamState.initial(param) if state is None else state
    beta1, beta2 = betas
    step = state.step + 1
    # torch.optim writes m ← β₁·m + (1 − β₁)·d as a lerp; same value, fewer roundings.
    exp_avg = state.exp_avg.lerp(direction, 1.0 - beta1)
    exp_avg_sq = beta2 * state.exp_avg_sq + (1.0 - beta2) * direction * direction
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = exp_avg_sq.sqrt() / bias_correction2**0.5 + eps
    new_param = param - (lr / bias_correction1) * (exp_avg / denom)
    return new_param, AdamState(step=step, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)


def _signed(grad: Tensor, maximize: bool) -> Tensor:
    # `maximize` flips the data gradient before any decay is added, never the decay itself.
    return -grad if maximize else grad


def _require_adam_arguments(
    param: Tensor,
    grad: Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    _require_matching(param=param, grad=grad)
    _require_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
    if len(betas) != 2:
        raise InvalidArgumentError("betas", betas, "two numbers in [0, 1)")
    for index, beta in enumerate(betas):
        check_in_range(f"betas[{index}]", beta, 0.0, 1.0, closed="left")


def _require_non_negative(**values: float) -> None:
    for name, value in values.items():
        check_finite_non_negative(name, value)


def _require_matching(*, param: Tensor, grad: Tensor) -> None:
    if grad.shape != param.shape:
        raise InvalidArgumentError(
            "grad", tuple(grad.shape), f"the shape of param, {tuple(param.shape)}"
        )
