"""Run directories: claimed atomically, and removed only by the run that claimed them.

Lightning's ``TensorBoardLogger`` picks ``version_N`` by listing the folder and
taking the next free number, then creates it later. Two fits started together
in one folder both pick the same N, write into one directory, and the one that
fails first would remove the other's run. :class:`ClaimingTensorBoardLogger`
creates ``version_N`` with one ``mkdir``, which only one process can win, and
remembers what it created.

A run that fails at its first batch (a shape mismatch, a checkpoint that does
not fit) has already made its run directory with a copy of its config and an
event file. Left behind, TensorBoard lists it as a run, and "resume the latest
version" finds a directory with no checkpoint in it:
:func:`discard_unstarted_run` removes it, but only if this process claimed it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

__all__ = ["ClaimingTensorBoardLogger", "claim_version_dir", "discard_unstarted_run"]

# What starting a run writes: the CLI's config, the loggers' hyper-parameters and event files.
_START_FILES = re.compile(r"config\.yaml|hparams\.yaml|metrics\.csv|events\.out\.tfevents\..*")


def claim_version_dir(root: str, first: int = 0) -> tuple[int, str]:
    """Create ``root/version_N`` for the smallest free N ≥ ``first``; only one caller gets each N.

    Returns:
        N and the directory created.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     first, second = claim_version_dir(folder), claim_version_dir(folder)
        >>> first[0], second[0]
        (0, 1)
    """
    version = first
    while True:
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, f"version_{version}")
        try:
            os.mkdir(path)  # atomic: exactly one process creates a given directory
        except FileExistsError:
            version += 1
        except FileNotFoundError:
            # Another run removed ``root`` (its own unstarted run was the last one in it)
            # between our makedirs and mkdir: make it again.
            continue
        else:
            return version, path


class ClaimingTensorBoardLogger(TensorBoardLogger):
    """A ``TensorBoardLogger`` whose ``version_N`` directory is claimed with an atomic ``mkdir``.

    Everything else is Lightning's logger. When the version is left to it, the
    logger of global rank zero creates ``version_N`` the first time the version
    is asked for, and records it in :attr:`claimed_dir`: runs started together
    in one folder get distinct versions, and :func:`discard_unstarted_run`
    knows which directory is this run's to remove. A given ``version`` is used
    as it is, as by Lightning (nothing is claimed).

    Lightning also logs an ``epoch`` scalar with every batch of metrics; this
    logger leaves it out, so that TensorBoard opens on the training curves
    rather than on a chart of the epoch counter (``--trainer.max_epochs`` and
    the step axis already say where an epoch ends).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     first = ClaimingTensorBoardLogger(folder)
        ...     second = ClaimingTensorBoardLogger(folder)
        ...     first.version, second.version, os.path.basename(second.claimed_dir)
        (0, 1, 'version_1')
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claimed_dir: str | None = None

    def _get_next_version(self) -> int:
        first = super()._get_next_version()
        # Other ranks never write; a remote file system has no atomic mkdir to rely on.
        if rank_zero_only.rank != 0 or "://" in str(self.root_dir):
            return first
        version, self.claimed_dir = claim_version_dir(self.root_dir, first)
        return version

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = {tag: value for tag, value in metrics.items() if tag != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)


def discard_unstarted_run(trainer: Any, start_step: int = 0) -> list[str]:
    """Delete the run directories ``trainer``'s loggers claimed, if it trained nothing.

    Only on global rank zero, only if the trainer is still at ``start_step``
    (0, or the step of the checkpoint it resumed from), only directories this
    process claimed (:class:`ClaimingTensorBoardLogger`; another run's
    directory, or one a plain logger reused, is never touched), and only if
    the directory holds nothing but the files starting a run writes: a
    checkpoint, or any file of a user's callback, keeps it. The logger's root
    folder (``lightning_logs``) goes too when nothing else is left in it.

    Returns:
        The directories removed.

    Example:
        >>> discard_unstarted_run(None)
        []
    """
    if trainer is None or not trainer.is_global_zero or trainer.global_step != start_step:
        return []
    removed = []
    for logger in trainer.loggers:
        claimed = getattr(logger, "claimed_dir", None)
        if claimed is None or not os.path.isdir(claimed) or not _only_start_files(claimed):
            continue
        shutil.rmtree(claimed, ignore_errors=True)
        removed.append(claimed)
        # Only if empty: a run that claimed a version meanwhile keeps the folder.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(claimed))
    return removed


def _only_start_files(folder: str) -> bool:
    return all(_START_FILES.fullmatch(name) for _, _, names in os.walk(folder) for name in names)
