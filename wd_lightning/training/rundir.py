"""Removing the run directory of a run that stopped before its first optimizer step.

A run that fails at its first batch (a shape mismatch, a checkpoint that does
not fit) has already made ``lightning_logs/version_N`` with a copy of its
config and an event file. Left behind, TensorBoard lists it as a run, and
"resume the latest version" finds a directory with no checkpoint in it.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

__all__ = ["discard_unstarted_run"]

# What starting a run writes: the CLI's config, the loggers' hyper-parameters and event files.
_START_FILES = re.compile(r"config\.yaml|hparams\.yaml|metrics\.csv|events\.out\.tfevents\..*")


def discard_unstarted_run(trainer: Any, start_step: int = 0) -> list[str]:
    """Delete the loggers' run directories of ``trainer`` if it trained nothing.

    Only on global rank zero, only if the trainer is still at ``start_step``
    (0, or the step of the checkpoint it resumed from), only for loggers
    whose directory this run created, and only if that directory holds
    nothing but the files starting a run writes: a checkpoint, or any file of
    a user's callback, keeps it. The logger's root folder (``lightning_logs``)
    goes too when nothing else is left in it.

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
        # A logger whose experiment was never created made no directory; asking it for
        # log_dir would name the next free version, possibly another run's.
        if getattr(logger, "_experiment", None) is None or not hasattr(logger, "log_dir"):
            continue
        log_dir = logger.log_dir
        if not os.path.isdir(log_dir) or not _only_start_files(log_dir):
            continue
        shutil.rmtree(log_dir, ignore_errors=True)
        removed.append(log_dir)
        root = getattr(logger, "root_dir", None)
        if root and not os.listdir(root):
            os.rmdir(root)
    return removed


def _only_start_files(folder: str) -> bool:
    return all(_START_FILES.fullmatch(name) for _, _, names in os.walk(folder) for name in names)
