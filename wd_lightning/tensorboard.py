"""Read scalars back from TensorBoard event files (for tests, notebooks and reports)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_scalars"]


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series under ``log_dir`` (one run's folder), as ``{tag: [(step, value), ...]}``.

    Steps are in logging order; if several event files exist (a resumed run),
    their events are merged.

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with SummaryWriter(folder) as writer:
        ...         writer.add_scalar("train/loss", 0.5, global_step=3)
        ...     read_scalars(folder)
        {'train/loss': [(3, 0.5)]}
    """
    # Imported here: the event-processing stack is only needed when reading back.
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()[SCALARS]
    }
