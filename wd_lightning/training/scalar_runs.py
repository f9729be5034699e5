"""The scalars of thousands of TensorBoard runs, written together at the cost of a few.

A sweep logs the same tags at the same steps for every member, one
TensorBoard run (folder) each. Encoding one protocol buffer per member and
step, and checksumming it with TensorBoard's pure-Python CRC-32C, costs tens
of microseconds a record: minutes for ten thousand members. Here the records
of all runs at one step are built as one byte array:

* the encoded event is the same for every run but for the 4 bytes of each
  value (the tags, step and wall time are shared), so it is laid out once and
  the values are copied into their columns;
* CRC-32C is affine in the message bits: ``crc(m) = crc(t) ⊕ L(m ⊕ t)`` for
  messages of one length, with ``L`` linear. With ``t`` the layout holding
  zeros, ``L`` of a message that differs only in the value bytes is the XOR
  of one 256-entry table lookup per value byte (the table depends on how far
  the byte is from the end). So every run's checksum is a handful of gathers
  and XORs over a ``(runs, bytes)`` tensor.

Other events (a run's HPARAMS and text summaries) are encoded by protobuf
and framed in batches: their checksums are computed together, one byte
position at a time across all the events of one length, rather than byte by
byte in Python for each.

The bytes written are exactly those ``RunWriter`` (the protobuf library)
would write. Files are opened only to append and closed again, so ten
thousand runs never hold ten thousand open files.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_positive,
    check_int_at_least,
)

__all__ = ["ScalarRuns"]

_CRC_MASK_DELTA = 0xA282EAD8


class ScalarRuns:
    """Scalar events of many TensorBoard runs (one folder each), written together.

    Every run gets one event file, holding what :class:`RunWriter` would
    write: one event per step with all of that step's values. Events wait in
    memory and are appended to the files:

    * ``flush_seconds`` after the first event not yet on disk, by a timer
      thread armed only while something waits (so a killed process loses at
      most the last ``flush_seconds`` of events), or at the next write after
      that;
    * when more than ``max_buffered_bytes`` wait;
    * on :meth:`flush` and :meth:`close`.

    Args:
        log_dirs: one folder per run (created when its first event is written).
        flush_seconds: the longest an event waits in memory, in seconds (> 0).
        max_buffered_bytes: flush once this many bytes wait (≥ 1).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from wd_lightning.training.tensorboard import read_scalars
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     runs = ScalarRuns([f"{folder}/a", f"{folder}/b"])
        ...     runs.add_table(["train/loss"], torch.tensor([[0.5], [0.25]]), step=3)
        ...     runs.close()
        ...     read_scalars(f"{folder}/a"), read_scalars(f"{folder}/b")
        ({'train/loss': [(3, 0.5)]}, {'train/loss': [(3, 0.25)]})
    """

    def __init__(
        self,
        log_dirs: Sequence[str | Path],
        flush_seconds: float = 2.0,
        max_buffered_bytes: int = 64 * 2**20,
    ) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.flush_seconds = check_finite_positive("flush_seconds", flush_seconds)
        self.max_buffered_bytes = check_int_at_least("max_buffered_bytes", max_buffered_bytes, 1)
        self.log_dirs = [Path(folder) for folder in log_dirs]
        self._paths: list[Path | None] = [None] * len(self.log_dirs)
        self._pending: list[bytearray] = [bytearray() for _ in self.log_dirs]
        self._dirty: set[int] = set()
        self._pending_bytes = 0
        self._lock = threading.Lock()  # guards the waiting events
        self._flushing = threading.Lock()  # one flush at a time
        self._timer: threading.Timer | None = None
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        # The values of the latest step, merged per tag until another step begins.
        self._step: int | None = None
        self._step_values: dict[str, Tensor] = {}
        self._step_runs: dict[str, Tensor] = {}
        self._event = Event
        # Serialised events given to add_event, framed together before anything
        # else is queued or written, so that each run's records keep their order.
        self._unframed: list[tuple[int, bytes]] = []
        # Steps of every run, as (runs, bytes) arrays that follow what _pending holds:
        # split into runs only when flushed, not once per run and step.
        self._blocks: list[np.ndarray] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self.log_dirs)

    def add_table(
        self, tags: Sequence[str], values: Tensor, step: int, runs: Tensor | None = None
    ) -> None:
        """Write ``values[i, j]`` as tag ``tags[j]`` at ``step`` in run ``i``.

        Values given for the same step are merged into one event per run (a
        later value of a tag replaces an earlier one, as ``RunWriter`` does),
        which is written when another step begins, or on :meth:`flush`.

        Args:
            tags: the tags, one per column.
            values: a ``(runs, tags)`` tensor, stored as float32 (as TensorBoard does).
            step: the step of every value.
            runs: optional boolean mask, ``(runs,)``: only those runs get the values.
        """
        if values.shape != (len(self), len(tags)):
            raise InvalidArgumentError(
                "values", tuple(values.shape), f"shape ({len(self)}, {len(tags)})"
            )
        if self._closed:
            raise ValueError("ScalarRuns is closed")
        if int(step) != self._step:
            self._encode_step()
            self._step = int(step)
        given = torch.ones(len(self), dtype=torch.bool) if runs is None else runs.cpu().bool()
        values = values.detach().float().cpu()
        for column, tag in enumerate(tags):
            if tag in self._step_values:
                self._step_values[tag] = torch.where(
                    given, values[:, column], self._step_values[tag]
                )
                self._step_runs[tag] = self._step_runs[tag] | given
            else:
                self._step_values[tag] = values[:, column].clone()
                self._step_runs[tag] = given.clone()

    def _encode_step(self) -> None:
        """Encode the current step's merged values: one event per run that has any."""
        if not self._step_values:
            return
        tags = list(self._step_values)
        values = torch.stack([self._step_values[tag] for tag in tags], dim=1)
        present = torch.stack([self._step_runs[tag] for tag in tags], dim=1)
        self._step_values, self._step_runs = {}, {}
        if bool(present.all()):  # the usual case: every run has every tag
            self._append(self._layout(tuple(tags)).records(values, self._step, time.time()), None)
            return
        # Runs with the same tags share a layout.
        patterns, group = torch.unique(present, dim=0, return_inverse=True)
        for index, pattern in enumerate(patterns):
            columns = pattern.nonzero().flatten().tolist()
            if not columns:
                continue
            layout = self._layout(tuple(tags[c] for c in columns))
            records = layout.records(values[:, columns].contiguous(), self._step, time.time())
            self._append(records, (group == index).nonzero().flatten().tolist())

    def _layout(self, tags: tuple[str, ...]) -> _Layout:
        layout = self._layouts.get(tags)
        if layout is None:
            layout = self._layouts[tags] = _Layout(tags)
        return layout

    def run(self, index: int) -> _Run:
        """Run ``index`` as a writer of summaries (e.g. for ``log_final_hparams``)."""
        return _Run(self, index)

    def add_event(self, run: int, event: Any) -> None:
        """Write an ``Event`` protocol buffer (e.g. HPARAMS summaries) to run ``run``."""
        if self._closed:
            raise ValueError("ScalarRuns is closed")
        self._encode_step()  # after the scalars given before it
        data = event.SerializeToString()
        with self._lock:
            self._unframed.append((run, data))
            self._pending_bytes += len(data) + 16  # its frame: length and two checksums
        self._after_write()

    def flush(self) -> None:
        """Append every waiting event to its run's file."""
        self._encode_step()
        self._cancel_timer()
        self._flush()

    def close(self) -> None:
        """Flush; further writes are refused."""
        self.flush()
        self._closed = True

    # ------------------------------------------------------------ internals
    def _append(self, records: _Records, keep: Sequence[int] | None) -> None:
        """Queue ``records`` for the runs ``keep`` (``None``: every run)."""
        if self._closed:
            raise ValueError("ScalarRuns is closed")
        with self._lock:
            self._frame_events()
            if keep is None:
                self._blocks.append(records.array)
                self._pending_bytes += records.array.size
            else:
                self._split_blocks()
                for run in keep:
                    self._pending[run] += records.array[run].tobytes()
                self._pending_bytes += records.size * len(keep)
                self._dirty.update(keep)
        self._after_write()

    def _take_blocks(self) -> np.ndarray | None:
        """The waiting steps of every run, one ``(runs, bytes)`` array or ``None`` (lock held)."""
        if not self._blocks:
            return None
        joined = np.concatenate(self._blocks, axis=1)
        self._blocks = []
        return joined

    def _split_blocks(self) -> None:
        """Move the waiting steps of every run into each run's queue (lock held)."""
        joined = self._take_blocks()
        if joined is None:
            return
        for run, row in enumerate(joined):
            self._pending[run] += row.tobytes()
        self._dirty.update(range(len(self)))

    def _frame_events(self) -> None:
        """Frame the events waiting since the last call, and queue them (lock held)."""
        if not self._unframed:
            return
        self._split_blocks()
        events, self._unframed = self._unframed, []
        checksums = _masked_crc32c_many([data for _, data in events])
        for (run, data), checksum in zip(events, checksums.tolist(), strict=True):
            length = struct.pack("<Q", len(data))
            self._pending[run] += (
                length
                + struct.pack("<I", _masked_length_crc(len(data)))
                + data
                + struct.pack("<I", checksum)
            )
            self._dirty.add(run)

    def _after_write(self) -> None:
        if self._pending_bytes >= self.max_buffered_bytes:
            self.flush()
        elif self._timer is None:
            timer = threading.Timer(self.flush_seconds, self._flush_from_timer)
            timer.daemon = True
            self._timer = timer
            timer.start()

    def _flush_from_timer(self) -> None:
        self._timer = None
        self._flush()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _flush(self) -> None:
        # Flushes run one at a time, each taking everything waiting when it
        # starts, so events reach each file in order; writers only wait for
        # the hand-over, not for the files.
        with self._flushing:
            with self._lock:
                self._frame_events()
                # The steps of every run, written from one array: no copy per run.
                steps = self._take_blocks()
                runs = range(len(self)) if steps is not None else sorted(self._dirty)
                batch = [(run, self._pending[run]) for run in runs]
                for run, _ in batch:
                    self._pending[run] = bytearray()
                self._dirty.clear()
                self._pending_bytes = 0
            for run, data in batch:
                self._append_to_file(run, data, None if steps is None else steps[run])

    def _append_to_file(self, run: int, data: bytes, steps: np.ndarray | None = None) -> None:
        """Append ``data``, then ``steps`` (the run's row of every-run steps), to its file."""
        path = self._paths[run]
        if path is None:
            from tensorboard.summary.writer.record_writer import RecordWriter

            folder = self.log_dirs[run]
            folder.mkdir(parents=True, exist_ok=True)
            path = self._paths[run] = folder / (
                f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                f".{os.getpid()}.runs{next(_FILE_COUNTER)}"
            )
            start = _Collect()
            event = self._event(wall_time=time.time(), file_version="brain.Event:2")
            RecordWriter(start).write(event.SerializeToString())
            data = bytes(start.data) + data
        # os-level calls: ten thousand runs are ten thousand opens per flush.
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            for part in (data, steps):
                view = memoryview(b"" if part is None else part)
                while view:
                    view = view[os.write(handle, view) :]
        finally:
            os.close(handle)


class _Run:
    """One run of a :class:`ScalarRuns`, with ``add_summary`` as ``RunWriter`` has it."""

    def __init__(self, runs: ScalarRuns, index: int) -> None:
        self._runs, self._index = runs, index

    def add_summary(self, summary: Any, step: int) -> None:
        """Write a ``Summary`` protocol buffer (e.g. HPARAMS, text) at ``step``."""
        from tensorboard.compat.proto.event_pb2 import Event

        event = Event(wall_time=time.time(), step=step, summary=summary)
        self._runs.add_event(self._index, event)


class _Collect:
    """A file-like object that keeps what is written (for RecordWriter)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class _Records:
    """One step's records of every run: row ``i`` of ``array`` is run ``i``'s, ``size`` bytes."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.size = array, array.shape[1]


class _Layout:
    """The encoding of one tag list: the summary's bytes and where each value goes."""

    def __init__(self, tags: Sequence[str]) -> None:
        summary = bytearray()
        value_offsets = []  # where each float's 4 bytes sit, from the summary's start
        for tag in tags:
            name = tag.encode()
            body = b"\x0a" + _varint(len(name)) + name + b"\x15"  # Value.tag, Value.simple_value
            entry = b"\x0a" + _varint(len(body) + 4) + body  # Summary.value
            value_offsets.append(len(summary) + len(entry))
            summary += entry + b"\x00\x00\x00\x00"
        self.summary = bytes(summary)
        # Each value byte's column in the summary, and its distance to the event's end.
        self.value_columns = np.array([offset + k for offset in value_offsets for k in range(4)])
        self.tables = _zero_extension_tables([len(summary) - 1 - c for c in self.value_columns])

    def records(self, values: Tensor, step: int, wall_time: float) -> _Records:
        """Every run's record (length, checksums, event) at ``step``."""
        # numpy, not torch: these are many small byte operations, and torch's
        # intra-op threads cost more than they save on them.
        head = b"\x09" + struct.pack("<d", wall_time)  # Event.wall_time
        if step:
            head += b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)  # Event.step (int64)
        head += b"\x2a" + _varint(len(self.summary))  # Event.summary
        template = head + self.summary
        length = struct.pack("<Q", len(template))
        header = length + struct.pack("<I", _masked(_crc32c(length)))
        runs = values.shape[0]
        value_bytes = values.numpy().astype("<f4").view(np.uint8).reshape(runs, -1)
        # The template holds zeros where the values go: crc(m) = crc(template) ⊕ L(m).
        lookups = self.tables[np.arange(value_bytes.shape[1]), value_bytes]
        crc = np.bitwise_xor.reduce(lookups, axis=1) ^ np.uint64(_crc32c(template))
        masked = (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF
        record = header + template + b"\x00\x00\x00\x00"
        out = np.empty((runs, len(record)), dtype=np.uint8)
        out[:] = np.frombuffer(record, dtype=np.uint8)
        out[:, len(header) + len(head) + self.value_columns] = value_bytes
        out[:, -4:] = masked.astype("<u4").view(np.uint8).reshape(runs, 4)
        return _Records(out)


def _zero_extension_tables(distances: list[int]) -> np.ndarray:
    """``tables[p, b]``: the CRC register after byte ``b`` followed by ``distances[p]`` zeros."""
    table = np.array(_CRC_TABLE, dtype=np.uint64)
    registers = np.tile(table, (len(distances), 1))  # each row: byte b from register 0
    remaining = np.array(distances)
    while (remaining > 0).any():
        active = remaining > 0
        registers[active] = table[registers[active] & 0xFF] ^ (registers[active] >> 8)
        remaining -= active
    return registers


def _build_crc_table() -> tuple[int, ...]:
    # CRC-32C (Castagnoli), reflected polynomial 0x82F63B78: TFRecord's checksum.
    entries = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        entries.append(crc)
    return tuple(entries)


_CRC_TABLE = _build_crc_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


@functools.lru_cache(maxsize=1024)
def _masked_length_crc(length: int) -> int:
    """The masked checksum of a record's 8-byte length (records of one length share it)."""
    return _masked(_crc32c(struct.pack("<Q", length)))


# Fewer messages of one length than this are checksummed one by one in Python:
# the vectorised pass costs one numpy operation per byte position.
_FEWEST_VECTORISED = 16


def _masked_crc32c_many(messages: Sequence[bytes]) -> np.ndarray:
    """The masked CRC-32C of each message, as TFRecord frames them.

    Messages of one length are checksummed together: their bytes form a
    ``(messages, length)`` array, and the CRC register of every message
    advances one column at a time.
    """
    result = np.empty(len(messages), dtype=np.uint64)
    by_length: dict[int, list[int]] = {}
    for index, message in enumerate(messages):
        by_length.setdefault(len(message), []).append(index)
    table = np.array(_CRC_TABLE, dtype=np.uint64)
    for length, indices in by_length.items():
        if len(indices) < _FEWEST_VECTORISED:
            for index in indices:
                result[index] = _masked(_crc32c(messages[index]))
            continue
        data = np.frombuffer(b"".join(messages[i] for i in indices), dtype=np.uint8)
        columns = data.reshape(len(indices), length).T.astype(np.uint64)
        crc = np.full(len(indices), 0xFFFFFFFF, dtype=np.uint64)
        for column in columns:
            crc = table[(crc ^ column) & 0xFF] ^ (crc >> 8)
        crc ^= 0xFFFFFFFF
        result[indices] = (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF
    return result


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


_FILE_COUNTER = itertools.count()
