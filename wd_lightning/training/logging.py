"""Logging that costs nothing a user can feel: a TensorBoard logger and a progress bar.

Lightning's default logging path does work after every value it writes:
``Trainer`` calls ``logger.save()`` after each ``log_metrics``, and
``TensorBoardLogger.save()`` flushes the ``SummaryWriter`` (a round trip to
its writer thread) and checks on the file system whether ``hparams.yaml``
exists. ``TQDMProgressBar`` redraws on every batch and at every epoch start
and end. On a model whose step takes a millisecond that is most of a fit.

* :class:`BufferedTensorBoardLogger` writes the same events to the same files
  in the same order, from the training thread, and flushes them on a timer
  (at most ``flush_seconds`` after they were written), at the end of each
  training epoch (with :class:`FlushLoggersAtEpochEnd`) and at teardown; it
  writes ``hparams.yaml`` once.
* :class:`TimedProgressBar` redraws at most every ``refresh_seconds``, and
  always at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.tensorboard import FileWriter, SummaryWriter

from wd_lightning.core.errors import check_finite_positive
from wd_lightning.training.rundir import ClaimingTensorBoardLogger
from wd_lightning.training.tensorboard import EventFile

__all__ = ["BufferedTensorBoardLogger", "FlushLoggersAtEpochEnd", "TimedProgressBar"]


class _SynchronousEvents(TensorBoardLogger):
    """The part of :class:`BufferedTensorBoardLogger` that writes: see there."""

    flush_seconds: float
    _hparams_file_written: bool

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The run's ``SummaryWriter``, writing synchronously (see the class)."""
        if self._experiment is not None:
            return self._experiment
        assert rank_zero_only.rank == 0, "tried to init log dirs in non global_rank=0"
        if self.root_dir:
            self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _TimedFlushSummaryWriter(
            self.flush_seconds, log_dir=self.log_dir, **self._kwargs
        )
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Write each scalar as the event ``SummaryWriter.add_scalar`` writes, without its detours.

        ``add_scalar`` converts every value through numpy and builds its
        summary through several layers; the event written here is the same
        (one per value, in the order given). Values that are not numbers
        (dictionaries of values) go through ``TensorBoardLogger`` as before.
        """
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        events = self.experiment._get_file_writer().event_writer
        separator = self.LOGGER_JOIN_CHAR
        for key, value in metrics.items():
            if isinstance(value, Tensor):
                value = value.item()
            if not isinstance(value, (int, float)):
                super().log_metrics({key: value}, step)
                continue
            tag = f"{self._prefix}{separator}{key}" if self._prefix else key
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
            event = Event(wall_time=time.time(), summary=summary)
            if step is not None:
                event.step = int(step)
            events.add_event(event)

    @rank_zero_only
    def save(self) -> None:
        """Write ``hparams.yaml`` the first time; events are flushed by time, not here."""
        if self._hparams_file_written:
            return
        dir_path = self.log_dir
        hparams_file = os.path.join(dir_path, self.NAME_HPARAMS_FILE)
        if self._fs.isdir(dir_path):
            if not self._fs.isfile(hparams_file):
                save_hparams_to_yaml(hparams_file, self.hparams)
            self._hparams_file_written = True

    @rank_zero_only
    def flush(self) -> None:
        """Hand every event written so far to the operating system."""
        if self._experiment is not None:
            self._experiment.flush()


class BufferedTensorBoardLogger(ClaimingTensorBoardLogger, _SynchronousEvents):
    """Lightning's ``TensorBoardLogger``, minus the work it does after every write.

    The event files hold the same events, at the same steps and in the same
    order, as ``TensorBoardLogger``'s; ``logger.experiment`` is still a
    ``SummaryWriter`` (``add_text``, ``add_histogram``, ... work as before).
    What changes is when the bytes reach the disk:

    * every event is on disk at most ``flush_seconds`` after it was written,
      so a killed process loses at most the last ``flush_seconds`` of logs
      (and TensorBoard shows new points that much later at the most);
    * at the end of every training epoch, when the trainer has a
      :class:`FlushLoggersAtEpochEnd` callback (the CLI adds one);
    * when the run ends, however it ends (``finalize``).

    ``hparams.yaml`` is written once, on the first ``save()`` after the run
    folder exists, with the hyper-parameters known then: the file Lightning's
    logger leaves behind, without a file-system check after every write. Like
    :class:`~wd_lightning.training.rundir.ClaimingTensorBoardLogger`, it claims
    its ``version_N`` folder atomically and leaves out Lightning's ``epoch``
    scalar.

    Args:
        save_dir: as for ``TensorBoardLogger``.
        flush_seconds: the longest an event waits in memory, in seconds (> 0).
        **kwargs: any other ``TensorBoardLogger`` argument (``name``,
            ``version``, ``default_hp_metric``, ``sub_dir``, ...).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     logger = BufferedTensorBoardLogger(folder, flush_seconds=5)
        ...     logger.log_metrics({"train/loss": 0.5}, step=3)
        ...     logger.finalize("success")
        ...     from wd_lightning.training.tensorboard import read_scalars
        ...     read_scalars(logger.log_dir)
        {'train/loss': [(3, 0.5)]}
    """

    def __init__(self, save_dir: str | os.PathLike, flush_seconds: float = 2.0, **kwargs: Any):
        self.flush_seconds = check_finite_positive("flush_seconds", flush_seconds)
        super().__init__(save_dir, **kwargs)
        self._hparams_file_written = False


class FlushLoggersAtEpochEnd(Callback):
    """Flushes every :class:`BufferedTensorBoardLogger` of the trainer when a training epoch ends.

    An epoch's last points then appear in TensorBoard as soon as the epoch is
    over, not up to ``flush_seconds`` later. A flush is one system call.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, BufferedTensorBoardLogger):
                logger.flush()


class _TimedFlushSummaryWriter(SummaryWriter):
    """A ``SummaryWriter`` whose event files are :class:`EventFile` s (no writer thread)."""

    def __init__(self, flush_seconds: float, **kwargs: Any) -> None:
        self._flush_seconds = flush_seconds
        super().__init__(**kwargs)

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            # SummaryWriter's own version starts a queue and a thread per file.
            self.file_writer = _EventFileWriter(
                self.log_dir, self._flush_seconds, self.filename_suffix
            )
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            if self.purge_step is not None:
                from tensorboard.compat.proto.event_pb2 import Event, SessionLog

                step, self.purge_step = self.purge_step, None
                self.file_writer.add_event(Event(step=step, file_version="brain.Event:2"))
                self.file_writer.add_event(
                    Event(step=step, session_log=SessionLog(status=SessionLog.START))
                )
        return self.file_writer


class _EventFileWriter(FileWriter):
    """torch's ``FileWriter`` (which stamps and wraps events) over an :class:`EventFile`."""

    def __init__(self, log_dir: str, flush_seconds: float, filename_suffix: str = "") -> None:
        # Not FileWriter.__init__: it would open TensorBoard's threaded EventFileWriter.
        self.event_writer = EventFile(log_dir, flush_seconds, filename_suffix)


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``refresh_seconds``.

    ``TQDMProgressBar`` redraws after every batch (or every ``refresh_rate``
    batches) and at every epoch start and end; on a fast model that costs more
    than training. This bar shows the same bars and metrics, but draws only
    when ``refresh_seconds`` have passed since the last drawing, and when
    training, validation or testing ends. A validation bar appears only for
    validation runs that last longer than ``refresh_seconds``.

    Args:
        refresh_seconds: the shortest time between two drawings, in seconds (> 0).
        process_position: as for ``TQDMProgressBar``.
        leave: as for ``TQDMProgressBar``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[TimedProgressBar(refresh_seconds=1.0)], logger=False)
        >>> type(trainer.progress_bar_callback).__name__
        'TimedProgressBar'
    """

    def __init__(
        self, refresh_seconds: float = 0.5, process_position: int = 0, leave: bool = False
    ) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.refresh_seconds = check_finite_positive("refresh_seconds", refresh_seconds)
        self._last_drawn = -float("inf")
        self._epoch_shown: int | None = None
        self._epoch = 0  # the epoch of the latest training batch
        self._train_batches_done = 0
        self._val_batches_done = 0
        self._val_started = 0.0
        self._val_bar: Any = None  # created only once a validation run lasts long enough

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last_drawn < self.refresh_seconds:
            return False
        self._last_drawn = now
        return True

    # ------------------------------------------------------------- training
    def on_train_start(self, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self._epoch_shown = None

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        self._epoch, self._train_batches_done = trainer.current_epoch, 0
        if self._leave:
            self._draw_train(trainer, None)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_batches_done = batch_idx + 1
        if self.is_enabled and self._due():
            self._draw_train(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._leave:
            self._draw_train(trainer, pl_module)
            self.train_progress_bar.close()
        elif self.is_enabled and self._due():
            self._draw_train(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled and not self._leave:
            self._draw_train(trainer, pl_module)
        self.train_progress_bar.close()

    def _draw_train(self, trainer: Trainer, pl_module: LightningModule | None) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        if self._epoch_shown != self._epoch:
            if self._leave and self._epoch_shown is not None:
                bar = self.train_progress_bar = self.init_train_tqdm()
            self._epoch_shown = self._epoch
            bar.set_description(f"Epoch {self._epoch}", refresh=False)
            bar.reset(total=_finite_or_none(self.total_train_batches))
        bar.n = self._train_batches_done
        if pl_module is not None:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    # ----------------------------------------------------------- validation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_started = time.monotonic()
            self._val_batches_done = 0

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        else:
            # Tracks which dataloader runs: the bar's total is that dataloader's length.
            self.has_dataloader_changed(dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            super().on_validation_batch_end(
                trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
            )
            return
        self._val_batches_done = batch_idx + 1
        long_enough = time.monotonic() - self._val_started >= self.refresh_seconds
        if self.is_enabled and long_enough and self._due():
            if self._val_bar is None:
                self._val_bar = self.init_validation_tqdm()
                self._val_bar.set_description(self.validation_description, refresh=False)
            self._val_bar.total = _finite_or_none(self.total_val_batches_current_dataloader)
            self._val_bar.n = self._val_batches_done
            self._val_bar.refresh()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            super().on_validation_end(trainer, pl_module)
            return
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        self.reset_dataloader_idx_tracker()
        if trainer.state.fn == "fit" and self.is_enabled and self._due():
            self._draw_train(trainer, pl_module)


def _finite_or_none(total: int | float) -> int | None:
    return int(total) if total != float("inf") else None
