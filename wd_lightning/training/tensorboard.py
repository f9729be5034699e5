"""TensorBoard event files: a light writer for many runs at once, and reading scalars back."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["RunWriter", "read_scalars"]


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


class RunWriter:
    """Writes the scalars of one TensorBoard run (one folder), synchronously and cheaply.

    A sweep logs dozens of runs side by side. ``SummaryWriter`` would start a
    thread and queue one event per value for each; this writer merges all
    values of a step into one event and writes through the file's buffer,
    flushing every couple of seconds so that a running TensorBoard keeps up.
    TensorBoard shows each folder as a run, so runs with the same tags overlay.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     writer = RunWriter(folder)
        ...     writer.add_scalars({"train/loss": 0.5}, step=3)
        ...     writer.add_scalars({"val/loss": 0.25}, step=3)
        ...     writer.close()
        ...     sorted(read_scalars(folder).items())
        [('train/loss', [(3, 0.5)]), ('val/loss', [(3, 0.25)])]
    """

    FLUSH_SECONDS = 2.0

    def __init__(self, log_dir: str | Path) -> None:
        # Imported here: only runs that write events need the protobuf stack.
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = Event, Summary

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The name TensorBoard looks for; the counter keeps files of one process apart.
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_FILE_COUNTER)}"
        )
        self.path = self.log_dir / name
        self._file = self.path.open("wb")
        self._records = RecordWriter(self._file)
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Write ``{tag: value}`` at ``step`` (merged with other values of the same step)."""
        if step != self._pending_step:
            self._write_pending()
            self._pending_step = step
        self._pending.update(values)

    def add_summary(self, summary: Any, step: int) -> None:
        """Write a ``Summary`` protocol buffer (e.g. from ``torch.utils.tensorboard.summary``)."""
        self._write_pending()
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Write everything given so far to disk."""
        self._write_pending()
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the event file."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        values = [self._summary.Value(tag=tag, simple_value=v) for tag, v in self._pending.items()]
        self._pending = {}
        event = self._event(
            wall_time=time.time(), step=self._pending_step, summary=self._summary(value=values)
        )
        self._write(event)

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        if time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self._file.flush()
            self._last_flush = time.monotonic()


_FILE_COUNTER = itertools.count()
