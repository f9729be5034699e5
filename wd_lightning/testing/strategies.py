"""Hypothesis strategies for weight tensors, gradients and optimizer hyper-parameters.

The values are chosen so that a correct update never fails for reasons unrelated to weight
decay: every element is finite, normal and exactly representable in the requested dtype, and
``lr·weight_decay < 1`` holds *by construction* (the product is drawn first), so no example is
thrown away by filtering.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from hypothesis import strategies as st
from torch import Tensor

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_positive,
    check_in_range,
    check_int_at_least,
    check_one_of,
)

__all__ = [
    "DecayHyperparameters",
    "ParamAndGrads",
    "adam_options",
    "decay_hyperparameters",
    "float_dtypes",
    "params_and_grads",
    "sgd_options",
    "tensor_shapes",
    "tensors",
]

_FLOAT_WIDTHS = {torch.float32: 32, torch.float64: 64}


class DecayHyperparameters(NamedTuple):
    """A learning rate and a weight-decay coefficient whose product lies below one."""

    lr: float
    weight_decay: float

    @property
    def decay_per_step(self) -> float:
        """The fraction ``lr·weight_decay`` of each weight removed by one plain SGD step."""
        return self.lr * self.weight_decay


class ParamAndGrads(NamedTuple):
    """Starting weights and the gradients for a run of consecutive steps."""

    param: Tensor
    grads: tuple[Tensor, ...]


def float_dtypes() -> st.SearchStrategy[torch.dtype]:
    """float32 or float64, the dtypes whose rounding the tolerance helper models.

    Example:
        >>> import torch
        >>> float_dtypes().example() in (torch.float32, torch.float64)
        True
    """
    return st.sampled_from([torch.float32, torch.float64])


def tensor_shapes(
    *, min_dims: int = 0, max_dims: int = 2, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    """Small shapes, including the 0-d shape ``()`` of scalar parameters.

    Args:
        min_dims: fewest dimensions, at least 0.
        max_dims: most dimensions, at least ``min_dims``.
        max_side: largest size of one dimension, at least 1.

    Example:
        >>> shape = tensor_shapes(max_dims=2, max_side=3).example()
        >>> len(shape) <= 2 and all(1 <= side <= 3 for side in shape)
        True
    """
    _require_int_at_least(0, min_dims=min_dims)
    _require_int_at_least(min_dims, max_dims=max_dims)
    _require_int_at_least(1, max_side=max_side)
    return st.integers(min_dims, max_dims).flatmap(
        lambda dims: st.tuples(*[st.integers(1, max_side)] * dims)
    )


def tensors(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_magnitude: float = 1e3,
) -> st.SearchStrategy[Tensor]:
    """Tensors of a fixed shape with finite, normal (or zero) elements.

    Args:
        shape: the shape of every tensor drawn.
        dtype: ``torch.float32`` or ``torch.float64``; elements are exact in it.
        device: where the tensors are created.
        max_magnitude: largest absolute element value; positive.

    Example:
        >>> import torch
        >>> t = tensors((2, 3), dtype=torch.float64, max_magnitude=1.0).example()
        >>> t.shape, t.dtype, bool(t.abs().max() <= 1.0)
        (torch.Size([2, 3]), torch.float64, True)
    """
    check_one_of("dtype", dtype, tuple(_FLOAT_WIDTHS))
    check_finite_positive("max_magnitude", max_magnitude)
    for index, side in enumerate(shape):
        check_int_at_least(f"shape[{index}]", side, 0)
    elements = st.floats(
        -max_magnitude,
        max_magnitude,
        width=_FLOAT_WIDTHS[dtype],
        allow_nan=False,
        allow_infinity=False,
        # Subnormals may be flushed to zero on some hardware; they test the FPU, not the decay.
        allow_subnormal=False,
    )
    size = math.prod(shape)
    return st.lists(elements, min_size=size, max_size=size).map(
        lambda values: torch.tensor(values, dtype=dtype, device=device).reshape(shape)
    )


def params_and_grads(
    *,
    steps: int = 1,
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_magnitude: float = 1e3,
) -> st.SearchStrategy[ParamAndGrads]:
    """Starting weights and ``steps`` to ``max_steps`` gradients of the same shape.

    Args:
        steps: fewest gradients, at least 1.
        max_steps: most gradients; defaults to ``steps``.
        dtype: ``torch.float32`` or ``torch.float64``.
        device: where the tensors are created.
        max_magnitude: largest absolute value of any weight or gradient element.

    Example:
        >>> example = params_and_grads(steps=2, max_steps=3).example()
        >>> 2 <= len(example.grads) <= 3
        True
        >>> all(g.shape == example.param.shape for g in example.grads)
        True
    """
    _require_int_at_least(1, steps=steps)
    max_steps = steps if max_steps is None else max_steps
    _require_int_at_least(steps, max_steps=max_steps)
    # Validates dtype and magnitude now rather than at the first draw.
    tensors((), dtype=dtype, device=device, max_magnitude=max_magnitude)

    def for_shape(shape: tuple[int, ...]) -> st.SearchStrategy[ParamAndGrads]:
        values = tensors(shape, dtype=dtype, device=device, max_magnitude=max_magnitude)
        return st.builds(
            lambda param, grads: ParamAndGrads(param=param, grads=tuple(grads)),
            values,
            st.lists(values, min_size=steps, max_size=max_steps),
        )

    return tensor_shapes().flatmap(for_shape)


def decay_hyperparameters(
    *,
    min_lr: float = 1e-4,
    max_lr: float = 1.0,
    max_decay_per_step: float = 0.9,
    allow_zero_decay: bool = True,
) -> st.SearchStrategy[DecayHyperparameters]:
    """Pairs ``(lr, weight_decay)`` with ``0 ≤ lr·weight_decay ≤ max_decay_per_step < 1``.

    The product ``lr·weight_decay`` is drawn first and divided by the learning rate, so every
    draw is valid: nothing is filtered away, and the decay factor ``1 − lr·λ`` stays positive.

    Args:
        min_lr: smallest learning rate, > 0.
        max_lr: largest learning rate, ``>= min_lr``.
        max_decay_per_step: largest product ``lr·weight_decay``, in ``(0, 1)``.
        allow_zero_decay: whether ``weight_decay = 0`` may be drawn.

    Example:
        >>> pair = decay_hyperparameters(max_decay_per_step=0.5).example()
        >>> 1e-4 <= pair.lr <= 1.0 and 0.0 <= pair.decay_per_step <= 0.5 * (1 + 1e-12)
        True
    """
    check_finite_positive("min_lr", min_lr)
    if check_finite_positive("max_lr", max_lr) < min_lr:
        raise InvalidArgumentError("max_lr", max_lr, f"a number >= min_lr ({min_lr})")
    # Below 1, so that 1 − lr·λ stays positive.
    check_in_range("max_decay_per_step", max_decay_per_step, 0.0, 1.0, closed="neither")
    min_product = 0.0 if allow_zero_decay else min(1e-3, max_decay_per_step)
    products = st.floats(min_product, max_decay_per_step, allow_subnormal=False)
    lrs = st.floats(min_lr, max_lr, allow_subnormal=False)
    return st.builds(
        lambda lr, product: DecayHyperparameters(lr=lr, weight_decay=product / lr), lrs, products
    )


@st.composite
def sgd_options(draw: st.DrawFn, *, allow_nesterov: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.SGD`` besides ``lr`` and ``weight_decay``.

    Draws ``momentum`` (sometimes exactly 0), ``dampening`` and ``nesterov``, respecting
    torch's rule that Nesterov momentum needs ``momentum > 0`` and ``dampening == 0``.

    Args:
        draw: supplied by Hypothesis.
        allow_nesterov: whether ``nesterov=True`` may be drawn.

    Example:
        >>> options = sgd_options().example()
        >>> sorted(options)
        ['dampening', 'momentum', 'nesterov']
        >>> not options["nesterov"] or (options["momentum"] > 0 and options["dampening"] == 0)
        True
    """
    momentum = draw(st.one_of(st.just(0.0), st.floats(0.01, 0.99)))
    nesterov = allow_nesterov and momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.one_of(st.just(0.0), st.floats(0.0, 0.9)))
    return {"momentum": momentum, "dampening": dampening, "nesterov": nesterov}


@st.composite
def adam_options(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments ``betas`` and ``eps`` for ``torch.optim.Adam`` and ``AdamW``.

    Example:
        >>> options = adam_options().example()
        >>> beta1, beta2 = options["betas"]
        >>> 0 <= beta1 < 1 and 0 < beta2 < 1 and options["eps"] > 0
        True
    """
    beta1 = draw(st.one_of(st.just(0.9), st.floats(0.0, 0.99)))
    beta2 = draw(st.one_of(st.just(0.999), st.floats(0.5, 0.9999)))
    eps = draw(st.one_of(st.just(1e-8), st.floats(1e-10, 1e-3)))
    return {"betas": (beta1, beta2), "eps": eps}


def _require_int_at_least(minimum: int, **values: int) -> None:
    for name, value in values.items():
        check_int_at_least(name, value, minimum)
