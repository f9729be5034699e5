"""When Lightning writes training-step metrics, so our extra logging can follow it exactly."""

from __future__ import annotations

from lightning.pytorch import Trainer

from wd_lightning.training.compat import batches_that_stepped

__all__ = ["logged_step", "logs_this_step"]


def logged_step(trainer: Trainer) -> int:
    """The step Lightning attaches to metrics logged during the current optimizer step.

    It counts completed optimizer steps, so a value logged at step *s* belongs to
    the weights after *s* steps. (Lightning keeps this counter in its fit loop;
    ``trainer.global_step`` is the same number until the optimizer steps.)
    """
    return batches_that_stepped(trainer)


def logs_this_step(trainer: Trainer, every_n_steps: int | None = None) -> bool:
    """Whether metrics of the current optimizer step reach the loggers.

    With ``every_n_steps=None`` this follows ``trainer.log_every_n_steps``, the
    same rule Lightning applies to ``self.log(..., on_step=True)``, including
    its last step when a callback stops the fit; it holds for every micro-batch
    of an accumulated step alike.
    """
    interval = trainer.log_every_n_steps if every_n_steps is None else every_n_steps
    if interval <= 0:
        return False
    return (logged_step(trainer) + 1) % interval == 0 or trainer.should_stop
