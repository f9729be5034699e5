"""Exceptions a user can cause, and the eager argument checks that raise them.

The CLI prints these as ``error: <message>`` and exits non-zero without a
traceback; the Python API raises them as ordinary exceptions.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BatchMismatchError",
    "CheckpointError",
    "InvalidArgumentError",
    "TrainerArgumentError",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "check_distinct",
    "check_finite",
    "check_finite_non_negative",
    "check_finite_positive",
    "check_in_range",
    "check_int_at_least",
    "check_one_of",
]


class InvalidArgumentError(ValueError):
    """An argument value outside what is allowed.

    Args:
        argument: the constructor argument's name, e.g. ``"weight_decay"``.
        value: the value that was given.
        allowed: what would have been accepted, e.g. ``"a finite number >= 0"``.

    Example:
        >>> str(InvalidArgumentError("weight_decay", -1.0, "a finite number >= 0"))
        'weight_decay=-1.0 is not allowed: expected a finite number >= 0'
    """

    def __init__(self, argument: str, value: Any, allowed: str) -> None:
        self.argument = argument
        self.value = value
        self.allowed = allowed
        super().__init__(self.describe())

    def describe(self) -> str:
        """The one-line message; subclasses word their own."""
        return f"{self.argument}={self.value!r} is not allowed: expected {self.allowed}"


class CheckpointError(InvalidArgumentError):
    """A checkpoint path that is missing, or a file that is not a usable checkpoint.

    ``value`` is the path as given; ``allowed`` says what was expected and
    what the file is instead.

    Example:
        >>> str(CheckpointError("--ckpt_path", "run.ckpt", "a checkpoint file: no such file"))
        "--ckpt_path='run.ckpt' is not allowed: expected a checkpoint file: no such file"
    """


class BatchMismatchError(InvalidArgumentError):
    """A batch the model or the loss cannot take: the data and the model disagree on a size.

    Args:
        argument: what was rejected, e.g. ``"inputs"`` or ``"targets"``.
        value: its shape, as a tuple.
        allowed: who rejected it and why, in torch's words.

    Example:
        >>> str(BatchMismatchError("inputs", (5, 200), "Linear(in_features=100) raised: ..."))
        'inputs of shape (5, 200) do not fit: Linear(in_features=100) raised: ...'
    """

    def describe(self) -> str:
        return f"{self.argument} of shape {self.value} do not fit: {self.allowed}"


class TrainerArgumentError(InvalidArgumentError):
    """A trainer argument that Lightning itself refuses, e.g. ``max_epochs=-5``.

    Example:
        >>> str(TrainerArgumentError("--trainer", None, "`max_epochs` must be >= -1."))
        '--trainer: `max_epochs` must be >= -1.'
    """

    def describe(self) -> str:
        return f"{self.argument}: {self.allowed}"


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingInterruptedError(RuntimeError):
    """A run stopped by SIGINT or SIGTERM, and the checkpoint to resume it from, if any.

    Args:
        signal_number: the signal that stopped the run.
        step: optimizer steps taken when a fit stopped; ``None`` if no fit had started.
        checkpoint: the checkpoint to pass as ``--ckpt_path``; ``None`` if there is none.

    Example:
        >>> import signal
        >>> str(TrainingInterruptedError(signal.SIGTERM, 123, "run/checkpoints/last.ckpt"))
        'fit interrupted by SIGTERM at step 123; resume with --ckpt_path run/checkpoints/last.ckpt'
        >>> TrainingInterruptedError(signal.SIGINT, None, None).exit_code
        130
    """

    def __init__(self, signal_number: int, step: int | None, checkpoint: str | None) -> None:
        self.signal_number = int(signal_number)
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        if step is None:
            message = f"interrupted by {name}"
        elif checkpoint is None:
            message = f"fit interrupted by {name} at step {step}; no checkpoint was saved"
        else:
            message = (
                f"fit interrupted by {name} at step {step}; resume with --ckpt_path {checkpoint}"
            )
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shells' convention for a process ended by a signal."""
        return 128 + self.signal_number


def _is_real(value: Any) -> bool:
    # bool is an int subclass, but True as a learning rate is a mistake, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(argument: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite real number.

    Example:
        >>> check_finite("bias", float("nan"))
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: bias=nan is not allowed: ...
    """
    if not _is_real(value) or not math.isfinite(value):
        raise InvalidArgumentError(argument, value, "a finite number")
    return float(value)


def check_finite_non_negative(argument: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number >= 0.

    Example:
        >>> check_finite_non_negative("weight_decay", 3)
        3.0
    """
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(argument, value, "a finite number >= 0")
    return float(value)


def check_finite_positive(argument: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (a 0-d tensor counts as a number).

    Learning rates are checked here: torch accepts a tensor learning rate.

    Example:
        >>> check_finite_positive("lr", 0.003)
        0.003
        >>> check_finite_positive("lr", 0)
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: lr=0 is not allowed: ...
    """
    number = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
    if not _is_real(number) or not math.isfinite(number) or number <= 0:
        raise InvalidArgumentError(argument, number, "a finite number > 0")
    return float(number)


def check_in_range(
    argument: str, value: Any, low: float, high: float, *, closed: str = "both"
) -> float:
    """Return ``value`` as a float if it lies between ``low`` and ``high``.

    ``closed`` says which ends are allowed: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.

    Example:
        >>> check_in_range("dampening", 0.5, 0.0, 1.0)
        0.5
        >>> check_in_range("beta", 1.0, 0.0, 1.0, closed="left")
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: beta=1.0 ...: expected a number in [0.0, 1.0)
    """
    left = closed in ("both", "left")
    right = closed in ("both", "right")
    interval = f"{'[' if left else '('}{low}, {high}{']' if right else ')'}"
    if (
        not _is_real(value)
        or math.isnan(value)
        or value < low
        or value > high
        or (value == low and not left)
        or (value == high and not right)
    ):
        raise InvalidArgumentError(argument, value, f"a number in {interval}")
    return float(value)


def check_one_of(argument: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``.

    Example:
        >>> check_one_of("penalty", "loss", ("optimizer", "loss"))
        'loss'
        >>> check_one_of("penalty", "l2", ("optimizer", "loss"))
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: penalty='l2' ...: expected one of ...
    """
    if not any(value is choice or value == choice for choice in choices):
        raise InvalidArgumentError(argument, value, "one of " + ", ".join(map(repr, choices)))
    return value


def check_distinct(argument: str, values: Sequence[Any], what: str) -> None:
    """Accept ``values`` if there is at least one and no two are equal.

    ``what`` names the elements in the message, e.g. ``"λ values"``.

    Example:
        >>> check_distinct("seeds", [0, 1], "integer seeds")
        >>> check_distinct("seeds", [0, 0], "integer seeds")
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: seeds=[0, 0] ...: expected distinct values
    """
    if not values:
        raise InvalidArgumentError(argument, values, f"a non-empty list of {what}")
    if len(set(values)) != len(values):
        raise InvalidArgumentError(argument, values, "distinct values")


def check_int_at_least(argument: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an integer >= ``minimum`` (``True`` is not an integer here).

    Example:
        >>> check_int_at_least("steps", 0, 1)
        Traceback (most recent call last):
        wd_lightning.core.errors.InvalidArgumentError: steps=0 ...: expected an integer >= 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(argument, value, f"an integer >= {minimum}")
    return value
