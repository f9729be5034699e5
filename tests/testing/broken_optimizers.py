"""Hand-written optimizers: two correct ones, and copies that each get weight decay wrong once.

Every broken optimizer differs from its correct parent in a single, realistic place, so a test
that catches it shows that the contract checker catches that mistake and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class HandWrittenSGD(Optimizer):
    """Correct SGD with coupled decay: ``d = ±g + λw``, optional heavy-ball momentum."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        maximize: bool = False,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}
        super().__init__(params, {**defaults, "maximize": maximize})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                state["step"] = state.get("step", 0) + 1
                param.add_(self._direction(param, group, state), alpha=-group["lr"])
        return loss

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        grad = -param.grad if group["maximize"] else param.grad
        return self._with_momentum(grad + group["weight_decay"] * param, group, state)

    @staticmethod
    def _with_momentum(direction: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        momentum = group["momentum"]
        if momentum == 0:
            return direction
        buffer = state.get("momentum_buffer")
        buffer = direction.clone() if buffer is None else buffer.mul_(momentum).add_(direction)
        state["momentum_buffer"] = buffer
        return buffer


class HandWrittenAdamW(Optimizer):
    """Correct AdamW: ``w ← (1 − ηλ)·w`` first, then Adam on the bare gradient."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                self._decay(param, group)
                self._adam_update(param, group)
        return loss

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        param.mul_(1 - group["lr"] * group["weight_decay"])

    def _adam_update(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if not state:
            state.update(step=0, m=torch.zeros_like(param), v=torch.zeros_like(param))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["m"].mul_(beta1).add_(param.grad, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        m_hat = state["m"] / (1 - beta1 ** state["step"])
        v_hat = state["v"] / (1 - beta2 ** state["step"])
        param.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


# --- coupled mistakes ---------------------------------------------------------------------------


class SignFlippedSGD(HandWrittenSGD):
    """Subtracts ``λw`` from the gradient: the weights grow instead of decaying."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return self._with_momentum(param.grad - group["weight_decay"] * param, group, state)


class DecayAfterMomentumSGD(HandWrittenSGD):
    """Adds ``λw`` after the momentum buffer instead of before, as an old C++ SGD did."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return self._with_momentum(param.grad, group, state) + group["weight_decay"] * param


class SkipsDecayEveryThirdStepSGD(HandWrittenSGD):
    """Forgets the decay on every third step, like a branch that only decays on some path."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        decay = 0.0 if state["step"] % 3 == 0 else group["weight_decay"]
        return self._with_momentum(param.grad + decay * param, group, state)


class DoubleDecaySGD(HandWrittenSGD):
    """Adds ``λw`` to the gradient *and* shrinks the weights by ``1 − ηλ``."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        direction = super()._direction(param, group, state)
        param.mul_(1 - group["lr"] * group["weight_decay"])
        return direction


class DefaultLrDecaySGD(HandWrittenSGD):
    """Shrinks by ``1 − η_default·λ``, the constructor's lr, instead of the group's lr."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        param.mul_(1 - self.defaults["lr"] * group["weight_decay"])
        return self._with_momentum(param.grad, group, state)


class CorrectlyShrinkingSGD(HandWrittenSGD):
    """Shrinks by ``1 − ηλ`` with the group's lr: equal to coupled decay without momentum.

    It is the correct twin of :class:`DefaultLrDecaySGD`.
    """

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        param.mul_(1 - group["lr"] * group["weight_decay"])
        return self._with_momentum(param.grad, group, state)


class DecaysGradlessSGD(HandWrittenSGD):
    """Decays every parameter, including those whose ``.grad`` is ``None`` (frozen ones)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                param.mul_(1 - group["lr"] * group["weight_decay"])
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"])
        return loss


class GradMutatingSGD(HandWrittenSGD):
    """Adds ``λw`` to ``.grad`` in place: the step is right, but the caller's gradient is not."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        decayed = param.grad.add_(param, alpha=group["weight_decay"])
        return self._with_momentum(decayed, group, state)


class MaximizeFlipsDecaySGD(HandWrittenSGD):
    """Negates the gradient *after* adding ``λw``, so ``maximize=True`` grows the weights."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        direction = param.grad + group["weight_decay"] * param
        return self._with_momentum(-direction if group["maximize"] else direction, group, state)


# --- decoupled mistakes -------------------------------------------------------------------------


class UnscaledDecayAdamW(HandWrittenAdamW):
    """Shrinks by ``1 − λ``, forgetting to multiply the decay by the learning rate."""

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        param.mul_(1 - group["weight_decay"])


class DecayAfterUpdateAdamW(HandWrittenAdamW):
    """Shrinks the weights after the Adam update instead of before."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._adam_update(param, group)
                    self._decay(param, group)
        return loss


class DefaultLrDecayAdamW(HandWrittenAdamW):
    """Shrinks by ``1 − η_default·λ`` with the constructor's lr instead of the group's."""

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        param.mul_(1 - self.defaults["lr"] * group["weight_decay"])


class GrowingAdamW(HandWrittenAdamW):
    """Multiplies by ``1 + ηλ``: the one-character mutation that passed a real test suite."""

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        param.mul_(1 + group["lr"] * group["weight_decay"])


class DecaysGradlessAdamW(HandWrittenAdamW):
    """Shrinks every parameter before checking whether it has a gradient."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                self._decay(param, group)
                if param.grad is not None:
                    self._adam_update(param, group)
        return loss


def _evaluate(closure: Callable[[], float] | None) -> float | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
