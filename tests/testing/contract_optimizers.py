"""Hand-written optimizers for the decay rules beyond coupled/decoupled, and for blind spots.

Each rule has a correct implementation and a realistic slip; each blind spot (warm-up, random
numbers, a jump at λ = 0, shapes, dtypes, group flags, closures) has an optimizer that the
check must pass only when it handles it, or must fail clearly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .broken_optimizers import HandWrittenAdamW, HandWrittenSGD, _evaluate


class _ShrinkingSGD(Optimizer):
    """Plain SGD whose decay is ``w ← (1 − factor)·w`` before the step, ``factor`` overridable."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                state["step"] = state.get("step", 0) + 1
                param.mul_(1 - self._factor(group, state))
                param.add_(param.grad, alpha=-group["lr"])
        return loss

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        raise NotImplementedError


# --- "independent": w ← (1 − λ)·w ----------------------------------------------------------------


class IndependentDecaySGD(_ShrinkingSGD):
    """Correct: the decay does not depend on the learning rate."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return group["weight_decay"]


class LrScaledIndependentSGD(_ShrinkingSGD):
    """Slip: documented as lr-independent, but multiplies λ by the lr anyway."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return group["lr"] * group["weight_decay"]


# --- "corrected": w ← (1 − λ·η/η₀)·w -------------------------------------------------------------


class CorrectedDecaySGD(_ShrinkingSGD):
    """Correct: λ times the schedule's multiplier, η₀ being the group's first lr."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        # The group's first lr, which torch's schedulers also record as "initial_lr".
        return group["weight_decay"] * group["lr"] / group["initial_lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return super().step(closure)


class ConstructorLrCorrectedSGD(_ShrinkingSGD):
    """Slip: divides by the constructor's lr instead of the group's first lr."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return group["weight_decay"] * group["lr"] / self.defaults["lr"]


# --- "corrected-max": w ← (1 − λ·η²/η_max)·w -----------------------------------------------------


class MaxCorrectedDecaySGD(_ShrinkingSGD):
    """Correct: λ·η²/η_max with η_max the largest lr the group has had."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return group["weight_decay"] * group["lr"] ** 2 / group["max_lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        for group in self.param_groups:
            group["max_lr"] = max(group.get("max_lr", 0.0), group["lr"])
        return super().step(closure)


class FirstLrCorrectedSGD(_ShrinkingSGD):
    """Slip: divides by the first lr, which is the largest only if the lr never rises."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return group["weight_decay"] * group["lr"] ** 2 / group["initial_lr"]


# --- "proximal" and "decoupled-after" ------------------------------------------------------------


class ProximalSGD(HandWrittenSGD):
    """Correct proximal step: ``w ← (w − η·g) / (1 + η·λ)``."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return self._with_momentum(param.grad, group, state)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                param.add_(self._direction(param, group, self.state[param]), alpha=-group["lr"])
                param.div_(1 + group["lr"] * group["weight_decay"])
        return loss


class LinearisedProximalSGD(ProximalSGD):
    """Slip: ``× (1 − η·λ)`` after the step, the first-order stand-in for ``÷ (1 + η·λ)``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _evaluate(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                param.add_(self._direction(param, group, self.state[param]), alpha=-group["lr"])
                param.mul_(1 - group["lr"] * group["weight_decay"])
        return loss


# --- "adaptive": decay times the optimizer's own step size ---------------------------------------


class StepSizeDecayAdamW(HandWrittenAdamW):
    """Correct: shrinks by ``1 − s·λ`` with a step size ``s`` it computes per tensor and step."""

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        # Smaller as the steps go on, like a step size that adapts to the run.
        step_size = group["lr"] / (1 + 0.5 * self.state[param].get("step", 0))
        param.mul_(1 - step_size * group["weight_decay"])


class PreconditionedDecayAdamW(HandWrittenAdamW):
    """Slip: divides the decay by √v element by element, so no single step size explains it."""

    def _decay(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        scale = 1.0 / (state["v"].sqrt() + 1.0) if "v" in state else torch.ones_like(param)
        param.sub_(group["lr"] * group["weight_decay"] * scale * param)


# --- a rule of one's own -------------------------------------------------------------------------


class DoubleStrengthDecaySGD(_ShrinkingSGD):
    """Correct for a user's own rule ``w ← (1 − 2·η·λ)·w`` before the step."""

    def _factor(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        return 2 * group["lr"] * group["weight_decay"]


# --- blind spots ---------------------------------------------------------------------------------


class WarmupSGD(HandWrittenSGD):
    """Correct coupled SGD that makes no update at all for its first 6 steps."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        direction = super()._direction(param, group, state)
        return direction if state["step"] > 6 else torch.zeros_like(direction)


class NeverMovingSGD(HandWrittenSGD):
    """Slip: its update is never applied (say, a flag defaulting to off)."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return torch.zeros_like(param)


class SignDecayIgnoredSGD(HandWrittenSGD):
    """Slip: reads the decay from ``group["wd"]``, so ``weight_decay`` is silently ignored.

    Its step is ``sign(g)``: a coupled twin given ``g + λ·w`` mostly gets the same sign, so
    only the check that the decay changed anything at all catches it reliably.
    """

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return (param.grad + group.get("wd", 0.0) * param).sign()


class NoisySGD(HandWrittenSGD):
    """Correct coupled SGD that adds Gaussian noise to every step (Langevin-style)."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return super()._direction(param, group, state) + torch.randn_like(param)


class NoisySignFlippedSGD(NoisySGD):
    """Slip under noise: subtracts ``λ·w``; the shared random numbers must not hide it."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return param.grad - group["weight_decay"] * param + torch.randn_like(param)


class TrustRatioSGD(HandWrittenSGD):
    """LARS-style coupled SGD: the step ``g + λ·w`` is scaled to ``‖w‖ / ‖g + λ·w‖``."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        direction = param.grad + group["weight_decay"] * param
        if self._uses_trust_ratio(group):
            ratio = param.norm() / direction.norm()
            if torch.isfinite(ratio) and ratio > 0:
                direction = direction * ratio
        return direction

    def _uses_trust_ratio(self, group: dict[str, Any]) -> bool:
        return True


class TrustRatioOnlyWithDecaySGD(TrustRatioSGD):
    """The LARS variant found in the wild: the trust ratio only applies when λ ≠ 0."""

    def _uses_trust_ratio(self, group: dict[str, Any]) -> bool:
        return group["weight_decay"] != 0


class MatrixOnlySGD(HandWrittenSGD):
    """Coupled SGD that, like Muon, only accepts 2-d parameters."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim != 2:
                    raise ValueError(f"only 2-d parameters are supported, got {param.ndim}-d")


class DtypeBucketDecaySGD(HandWrittenSGD):
    """Slip: decays only parameters of the first parameter's dtype, as a per-dtype bucket bug."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        first_dtype = self.param_groups[0]["params"][0].dtype
        decay = group["weight_decay"] if param.dtype == first_dtype else 0.0
        return self._with_momentum(param.grad + decay * param, group, state)


class FlaggedGroupsSGD(HandWrittenSGD):
    """Coupled SGD that, like Muon variants, needs a ``use_flag`` entry on every group."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            if "use_flag" not in group:
                raise ValueError("every parameter group needs a 'use_flag' entry")


class ClosureOnlySGD(HandWrittenSGD):
    """Coupled SGD that, like SAM or L-BFGS, requires a closure and calls it for the gradient."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if closure is None:
            raise RuntimeError("this optimizer requires a closure")
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None
        loss = _evaluate(closure)
        super().step()
        return loss


class GradMutatingSignFlippedSGD(HandWrittenSGD):
    """Slip under an in-place write: subtracts ``λ·w`` from ``.grad`` itself."""

    def _direction(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return self._with_momentum(
            param.grad.sub_(param, alpha=group["weight_decay"]), group, state
        )
