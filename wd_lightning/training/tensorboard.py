"""TensorBoard event files: a light writer for many runs at once, and reading scalars back."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from wd_lightning.core.errors import check_finite_positive

__all__ = ["EventFile", "RunWriter", "read_scalars"]


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


class EventFile:
    """One TensorBoard event file, written synchronously and flushed on a timer.

    ``SummaryWriter`` hands every event to a background thread through a
    queue, and waking that thread costs more than writing the event; a logger
    that flushes after every write (as Lightning's does) pays a round trip to
    it each time. This file is written from the caller's thread, through the
    file's buffer, and flushed:

    * ``flush_seconds`` after the first event that is not on disk yet, by a
      timer thread armed only while something is waiting (so a process killed
      at any moment loses at most the last ``flush_seconds`` of events, and an
      idle one does no work);
    * whenever :meth:`flush` or :meth:`close` is called.

    Events are written in the order given. It has the methods of
    TensorBoard's ``EventFileWriter`` that ``torch.utils.tensorboard`` uses
    (``add_event``, ``flush``, ``close``, ``reopen``, ``get_logdir``).

    Args:
        log_dir: the run's folder (created if absent).
        flush_seconds: the longest an event waits before it is flushed to the
            operating system, in seconds (> 0).
        filename_suffix: appended to the file's name.

    Example:
        >>> import tempfile
        >>> from tensorboard.compat.proto.event_pb2 import Event
        >>> from tensorboard.compat.proto.summary_pb2 import Summary
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     events = EventFile(folder)
        ...     value = Summary.Value(tag="train/loss", simple_value=0.5)
        ...     events.add_event(Event(step=3, summary=Summary(value=[value])))
        ...     events.close()
        ...     read_scalars(folder)
        {'train/loss': [(3, 0.5)]}
    """

    def __init__(
        self, log_dir: str | Path, flush_seconds: float = 2.0, filename_suffix: str = ""
    ) -> None:
        # Imported here: only runs that write events need the protobuf stack.
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.flush_seconds = check_finite_positive("flush_seconds", flush_seconds)
        self.filename_suffix = filename_suffix
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The name TensorBoard looks for; the counter keeps files of one process apart.
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_FILE_COUNTER)}{filename_suffix}"
        )
        self.path = self.log_dir / name
        self._file = self.path.open("wb")
        self._records = RecordWriter(self._file)
        self._timer: threading.Timer | None = None
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_event(self, event: Any) -> None:
        """Append an ``Event`` protocol buffer; it reaches the disk within ``flush_seconds``."""
        self.write_serialized(event.SerializeToString())

    def write_serialized(self, data: bytes) -> None:
        """Append an already serialised ``Event``."""
        # One write call per record: the buffered file's own lock keeps a timer's
        # flush from landing in the middle of it.
        self._records.write(data)
        if self._timer is None:
            # Read after the write: a timer that has just fired sets it to None
            # before flushing, so either that flush or a new timer covers this event.
            timer = threading.Timer(self.flush_seconds, self._flush_from_timer)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def flush(self) -> None:
        """Hand everything written so far to the operating system."""
        self._cancel_timer()
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file (further events need :meth:`reopen`)."""
        self.flush()
        self._file.close()

    def reopen(self) -> None:
        """After :meth:`close`, continue in a new event file in the same folder."""
        if self._file.closed:
            self.__init__(self.log_dir, self.flush_seconds, self.filename_suffix)

    def get_logdir(self) -> str:
        """The run's folder."""
        return str(self.log_dir)

    def _flush_from_timer(self) -> None:
        self._timer = None
        with contextlib.suppress(ValueError):  # closed meanwhile: close() flushed it
            self._file.flush()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


class RunWriter:
    """Writes the scalars of one TensorBoard run (one folder), synchronously and cheaply.

    A sweep logs many runs side by side. ``SummaryWriter`` would start a
    thread and queue one event per value for each; this writer merges all
    values of a step into one event and writes it to an :class:`EventFile`,
    which a running TensorBoard sees within ``EventFile.flush_seconds``.
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

    def __init__(self, log_dir: str | Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event, self._summary = Event, Summary
        self._file = EventFile(log_dir)
        self.log_dir, self.path = self._file.log_dir, self._file.path
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Write ``{tag: value}`` at ``step`` (merged with other values of the same step)."""
        if step != self._pending_step:
            self._write_pending()
            self._pending_step = step
        self._pending.update(values)

    def add_summary(self, summary: Any, step: int) -> None:
        """Write a ``Summary`` protocol buffer (e.g. from ``torch.utils.tensorboard.summary``)."""
        self._write_pending()
        self._file.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Write everything given so far to disk."""
        self._write_pending()
        self._file.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._write_pending()
        self._file.close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        values = [self._summary.Value(tag=tag, simple_value=v) for tag, v in self._pending.items()]
        self._pending = {}
        event = self._event(
            wall_time=time.time(), step=self._pending_step, summary=self._summary(value=values)
        )
        self._file.add_event(event)


_FILE_COUNTER = itertools.count()
