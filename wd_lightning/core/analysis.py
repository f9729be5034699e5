"""Closed-form answers for the linear model: ridge, the λ = 0 limit, and where w can move.

The objective trained on ``n`` examples ``(X, y)`` is the article's::

    L(w, b) = 1/(2n)·‖Xw + b − y‖² + λ/2·‖w‖²        (the bias is not penalised)

Everything here is plain torch in float64, with no Lightning, so it can be
checked against an independent solve and reused outside a training run.

Two facts explain the article's 13 vs 0.4:

* Every gradient of the data term, ``Xᵀr/n`` for residuals ``r``, lies in the
  *row space* of the training inputs (at most ``n`` of the ``d`` directions).
  The component of ``w`` in the complement, the null space of ``X``, is only
  touched by the decay, so plain SGD gives ``P⊥w_T = (1 − ηλ)^T·P⊥w₀`` exactly,
  whatever the batches were (:func:`predicted_null_space_norm`).
* With 20 examples in 200 dimensions that complement has 180 dimensions: the
  initial weights there never move without decay (‖w‖ stays ≈ ‖w₀‖ ≈ 14), and
  with λ = 3 they are scaled by 0.991 per step, 0.027 after 400 steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wd_lightning.core import losses
from wd_lightning.core.errors import InvalidArgumentError, check_finite_non_negative

__all__ = [
    "LinearSolution",
    "RowSpace",
    "RowSpaceSplit",
    "half_mse",
    "interpolant_from",
    "predicted_null_space_norm",
    "ridge_path",
    "ridge_solution",
    "split_row_space",
]


@dataclass(frozen=True)
class LinearSolution:
    """A weight vector ``w`` of shape ``(d,)`` and a scalar bias ``b``, in float64."""

    weight: Tensor
    bias: Tensor

    @property
    def weight_norm(self) -> float:
        """‖w‖₂, the figure the article reports."""
        return float(self.weight.norm())


@dataclass(frozen=True)
class RowSpaceSplit:
    """``w = row + null``: the parts of ``w`` in the training inputs' row space and outside it."""

    row: Tensor
    null: Tensor


def _as_problem(inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if inputs.ndim != 2:
        raise InvalidArgumentError("inputs", tuple(inputs.shape), "a matrix of shape (n, d)")
    y = targets.reshape(-1)
    if len(y) != len(inputs):
        raise InvalidArgumentError(
            "targets", tuple(targets.shape), f"{len(inputs)} values, one per row of inputs"
        )
    return inputs.detach().double().cpu(), y.detach().double().cpu()


def ridge_solution(inputs: Tensor, targets: Tensor, weight_decay: float) -> LinearSolution:
    """The minimiser of ``1/(2n)·‖Xw + b − y‖² + λ/2·‖w‖²``.

    The bias absorbs the means, so ``w`` solves ridge regression on the centred
    data, ``(XcᵀXc + nλI)·w = Xcᵀyc``, and ``b = ȳ − x̄ᵀw``. ``λ = 0`` gives
    the least-squares fit of smallest ‖w‖ (which SGD reaches only from
    ``w₀ = 0``; see :func:`interpolant_from`).

    Args:
        inputs: training inputs ``X``, shape ``(n, d)``.
        targets: training targets ``y``, ``n`` values in any shape.
        weight_decay: λ, a finite number >= 0.

    Example:
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> solution = ridge_solution(X, X.sum(1) + 0.5, weight_decay=0.0)
        >>> solution.weight.round(decimals=9).tolist(), round(solution.bias.item(), 9)
        ([1.0, 1.0], 0.5)
        >>> ridge_solution(X, X.sum(1), weight_decay=1e6).weight_norm < 1e-5
        True
    """
    return ridge_path(inputs, targets, [weight_decay])[0]


def ridge_path(
    inputs: Tensor, targets: Tensor, weight_decays: Sequence[float]
) -> list[LinearSolution]:
    """:func:`ridge_solution` for many λ at the cost of one SVD.

    With the centred inputs ``Xc = U·diag(s)·Vᵀ``, the solution is
    ``w(λ) = V·diag(s / (s² + nλ))·Uᵀyc``: only the diagonal depends on λ.

    Example:
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> [round(s.weight_norm, 4) for s in ridge_path(X, X.sum(1), [0.0, 0.1, 10.0])]
        [1.4142, 0.7443, 0.0155]
    """
    weight_decays = [check_finite_non_negative("weight_decay", wd) for wd in weight_decays]
    X, y = _as_problem(inputs, targets)
    n = len(X)
    x_mean, y_mean = X.mean(0), y.mean()
    u, s, vh = torch.linalg.svd(X - x_mean, full_matrices=False)
    projected = u.T @ (y - y_mean)
    # Directions with singular values at rounding level carry no data: λ = 0 leaves them at 0.
    largest = s.max() if s.numel() else torch.tensor(0.0, dtype=X.dtype)
    kept = s > largest * max(X.shape) * torch.finfo(X.dtype).eps
    solutions = []
    for weight_decay in weight_decays:
        gains = torch.where(kept, s / (s.square() + n * weight_decay), torch.zeros_like(s))
        weight = vh.T @ (gains * projected)
        solutions.append(LinearSolution(weight, y_mean - x_mean @ weight))
    return solutions


def interpolant_from(
    inputs: Tensor, targets: Tensor, initial_weight: Tensor, initial_bias: Tensor | float
) -> LinearSolution:
    """Where gradient descent without decay ends from ``(w₀, b₀)``: the nearest exact fit.

    With ``A = [X, 1]`` and ``θ = (w, b)`` the data term's gradient lies in the
    row space of ``A``, so θ moves only there and converges to
    ``θ₀ + A⁺(y − Aθ₀)``: the interpolant closest to where it started. The
    initial weights outside that row space are kept, which is why the article's
    λ = 0 run ends with ‖w‖ ≈ ‖w₀‖.

    Example:
        >>> X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> fit = interpolant_from(X, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0, 5.0]), 0.0)
        >>> (X.double() @ fit.weight + fit.bias).round(decimals=9).tolist(), fit.weight[2].item()
        ([1.0, 2.0], 5.0)
    """
    X, y = _as_problem(inputs, targets)
    A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    theta0 = torch.cat(
        [initial_weight.detach().double().cpu().reshape(-1), torch.tensor([float(initial_bias)])]
    )
    theta = theta0 + torch.linalg.pinv(A) @ (y - A @ theta0)
    return LinearSolution(theta[:-1], theta[-1])


class RowSpace:
    """The row space of the training inputs ``X``: where every data gradient of ``w`` lies.

    Computed once (an SVD of ``X``), then used to split any number of weight vectors.

    Example:
        >>> space = RowSpace(torch.tensor([[1.0, 0.0, 0.0]]))
        >>> space.dim
        1
        >>> split = space.split(torch.tensor([3.0, 4.0, 0.0]))
        >>> split.row.tolist(), split.null.tolist()
        ([3.0, 0.0, 0.0], [0.0, 4.0, 0.0])
    """

    def __init__(self, inputs: Tensor) -> None:
        X = inputs.detach().double().cpu()
        if X.ndim != 2:
            raise InvalidArgumentError("inputs", tuple(inputs.shape), "a matrix of shape (n, d)")
        _, singular, vh = torch.linalg.svd(X, full_matrices=False)
        largest = singular.max() if singular.numel() else torch.tensor(0.0)
        # Directions with singular values at rounding level are not in the row space.
        tolerance = largest * max(X.shape) * torch.finfo(X.dtype).eps
        self.basis = vh[singular > tolerance]  # orthonormal rows spanning the row space
        self.num_inputs = X.shape[1]

    @property
    def dim(self) -> int:
        """The dimension of the row space (the rank of ``X``)."""
        return len(self.basis)

    def split(self, weight: Tensor) -> RowSpaceSplit:
        """``weight`` as its projection on the row space plus the rest."""
        w = weight.detach().double().cpu().reshape(-1)
        if len(w) != self.num_inputs:
            raise InvalidArgumentError(
                "weight", tuple(weight.shape), f"{self.num_inputs} values, one per input column"
            )
        row = self.basis.T @ (self.basis @ w)
        return RowSpaceSplit(row, w - row)


def split_row_space(inputs: Tensor, weight: Tensor) -> RowSpaceSplit:
    """Split ``weight`` into its projections on the row space of ``inputs`` and its complement.

    Example:
        >>> split = split_row_space(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([3.0, 4.0, 0.0]))
        >>> split.null.tolist()
        [0.0, 4.0, 0.0]
    """
    return RowSpace(inputs).split(weight)


def predicted_null_space_norm(
    initial_null_norm: float, lr: float, weight_decay: float, steps: int
) -> float:
    """``(1 − ηλ)^T·‖P⊥w₀‖``: the null-space norm plain SGD must have after ``T`` steps.

    Exact for SGD without momentum at a constant learning rate (the data
    gradient has no component there); other optimizers do not obey it.

    Example:
        >>> round(predicted_null_space_norm(13.5, lr=0.003, weight_decay=3.0, steps=400), 4)
        0.3629
    """
    return abs(1.0 - lr * weight_decay) ** steps * initial_null_norm


def half_mse(inputs: Tensor, targets: Tensor, solution: LinearSolution) -> float:
    """The article's loss, ``1/(2n)·‖Xw + b − y‖²``, of a linear solution.

    Example:
        >>> X = torch.eye(2)
        >>> half_mse(X, torch.tensor([1.0, 1.0]), LinearSolution(torch.zeros(2), torch.tensor(0.0)))
        0.5
    """
    X, y = _as_problem(inputs, targets)
    return float(losses.half_mse(X @ solution.weight.double() + solution.bias.double(), y))
