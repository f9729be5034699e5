"""Tolerances sized by the terms of an update, not by its result.

An update such as ``w − η·(g + λ·w)`` can cancel: with ``w = −823.05``, ``g = −821.98``,
``η = 1`` and ``λ = 1e-4`` the result is about ``−0.98``, yet each term carries a rounding error
of order ``eps·800``. ``torch.testing.assert_close`` scales its tolerance by the *result* and so
rejects the correct float32 answer. Rounding errors scale with the terms that were added, so
the tolerance here is ``ulps · eps(dtype) · (|w| + η|g| + ηλ|w|)`` element by element (plus
a floor at the smallest normal number, for results that underflow).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wd_lightning.core.errors import InvalidArgumentError, check_finite_positive

__all__ = ["DEFAULT_ULPS", "assert_close_to_terms", "sgd_terms_magnitude", "terms_magnitude"]

#: Rounding units allowed per unit of term magnitude. One SGD step rounds at most about three
#: times (the decay product, the sum, the step), so four leaves a margin without hiding bugs.
DEFAULT_ULPS = 4.0


def terms_magnitude(*terms: Tensor | float) -> Tensor:
    """Element-wise sum of the absolute values of the terms that made up a result.

    Args:
        *terms: tensors (or numbers) that broadcast together; at least one tensor.

    Returns:
        ``Σ|term|`` in float64, so that the tolerance itself adds no rounding of note.

    Raises:
        ValueError: if no tensor is given.

    Example:
        >>> import torch
        >>> terms_magnitude(torch.tensor([1.0, -2.0]), torch.tensor([-3.0, 0.5]))
        tensor([4.0000, 2.5000], dtype=torch.float64)
    """
    tensors = [term for term in terms if isinstance(term, Tensor)]
    if not tensors:
        raise InvalidArgumentError("terms", terms, "at least one tensor")
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for term in terms:
        magnitude = term.detach().abs().to(torch.float64) if isinstance(term, Tensor) else abs(term)
        total = total + magnitude
    return total


def sgd_terms_magnitude(param: Tensor, grad: Tensor, *, lr: float, weight_decay: float) -> Tensor:
    """Size of the terms of one SGD step with coupled decay: ``|w| + η|g| + ηλ|w|``.

    Args:
        param: the weights before the step.
        grad: the gradient (or momentum direction) of the step.
        lr: learning rate ``η``.
        weight_decay: decay coefficient ``λ``.

    Returns:
        The magnitude, element by element, in float64.

    Example:
        >>> import torch
        >>> sgd_terms_magnitude(torch.tensor([2.0]), torch.tensor([-1.0]), lr=0.5, weight_decay=1.0)
        tensor([3.5000], dtype=torch.float64)
    """
    param = param.detach()
    return terms_magnitude(param, lr * grad.detach().abs(), lr * weight_decay * param.abs())


def assert_close_to_terms(
    actual: Tensor,
    expected: Tensor,
    *,
    magnitude: Tensor | float,
    ulps: float = DEFAULT_ULPS,
    msg: str | None = None,
) -> None:
    """Assert ``|actual − expected| ≤ ulps · (eps · magnitude + tiny)`` element by element.

    ``eps`` and ``tiny`` (the smallest normal number) belong to the less precise of the two
    dtypes, so a float32 result can be compared with a float64 reference. ``tiny`` covers
    results that underflow into the subnormal range, where rounding is absolute rather than
    relative, or are flushed to zero by hardware that does not keep subnormals.

    Args:
        actual: the value under test.
        expected: the reference value; shapes must match exactly.
        magnitude: size of the terms that produced the value, e.g. from
            :func:`sgd_terms_magnitude`; summed over all steps for a trajectory.
        ulps: how many ``eps`` to allow per unit of magnitude; must be positive.
        msg: text put in front of the failure description.

    Raises:
        ValueError: if ``ulps`` is not positive.
        AssertionError: if the shapes differ, a value is not finite where the reference is,
            or an element lies outside the tolerance. The message names the worst element.

    Example:
        >>> import torch
        >>> w = torch.tensor([-823.045166015625])
        >>> g = torch.tensor([-821.9805908203125])
        >>> exact = w.double() - (g.double() + 1e-4 * w.double())
        >>> float32_result = w - (g + 1e-4 * w)
        >>> magnitude = sgd_terms_magnitude(w, g, lr=1.0, weight_decay=1e-4)
        >>> assert_close_to_terms(float32_result, exact, magnitude=magnitude)
    """
    check_finite_positive("ulps", ulps)
    prefix = f"{msg}: " if msg else ""
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{prefix}shape {tuple(actual.shape)} differs from expected {tuple(expected.shape)}."
        )
    coarser = max(torch.finfo(actual.dtype), torch.finfo(expected.dtype), key=lambda f: f.eps)
    eps, tiny = coarser.eps, coarser.tiny
    actual64 = actual.detach().to(torch.float64)
    expected64 = expected.detach().to(device=actual.device, dtype=torch.float64)
    magnitude = torch.as_tensor(magnitude, dtype=torch.float64, device=actual.device)
    allowed = ulps * (eps * magnitude + tiny)
    allowed = allowed.expand_as(actual64) if allowed.dim() == 0 else allowed
    error = (actual64 - expected64).abs()
    # Non-finite results are only accepted where the reference has the identical value.
    same = actual64 == expected64
    bad = ~(same | (error <= allowed))
    if bool(bad.any()):
        worst = int(torch.where(bad, error.nan_to_num(float("inf")), -1.0).flatten().argmax())
        index = _unravel(worst, tuple(actual.shape))
        got, want = actual64.flatten()[worst].item(), expected64.flatten()[worst].item()
        raise AssertionError(
            f"{prefix}{int(bad.sum())} of {actual.numel()} elements differ beyond "
            f"{ulps} × (eps × terms + tiny). Worst at index {index}: actual {got!r}, "
            f"expected {want!r}, |difference| {error.flatten()[worst].item():.3e} > allowed "
            f"{allowed.flatten()[worst].item():.3e}."
        )


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        flat_index, position = divmod(flat_index, size)
        index.append(position)
    return tuple(reversed(index))
