"""SIGINT and SIGTERM as a clean stop: at a step boundary while training, at once otherwise.

While a Lightning trainer runs, its own SIGTERM handler only raises a flag;
the loops finish the current batch and then raise ``SIGTERMException``, which
Lightning hands to every callback's ``on_exception`` (a ``ModelCheckpoint``
with ``save_on_exception=True`` saves there) before it re-raises it. Such a
checkpoint lies on a step boundary, so a fit resumed from it is exact.

SIGINT (Ctrl+C) has no such path: Python raises ``KeyboardInterrupt`` wherever
the main thread happens to be, possibly between the updates of two parameter
groups, and Lightning saves whatever state that left. :class:`InterruptGuard`
therefore turns a first SIGINT during training into the SIGTERM path; a second
one interrupts at once, for a run that does not reach a step boundary.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["InterruptGuard", "quiet_interrupt_notices"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Lightning's own lines about an interrupt: "[rank: 0] Received SIGTERM: 15" from its
# signal handler, "An SIGTERMException was raised with message: ..., saved checkpoint to
# ..." from ModelCheckpoint.on_exception.
_NOTICES = {
    "lightning.pytorch.trainer.connectors.signal_connector": ("Received SIGTERM",),
    "lightning.pytorch.utilities.rank_zero": (
        "SIGTERMException was raised",
        "KeyboardInterrupt was raised",
    ),
}


class _DropNotices(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(phrase in message for phrase in self.phrases)


@contextmanager
def quiet_interrupt_notices() -> Iterator[None]:
    """Drop Lightning's log lines about an interrupt while the block runs.

    A program that reports the interrupt itself, in one line naming the
    checkpoint to resume from (as the command line does), would otherwise
    print it after two lines of Lightning's. Other log lines pass.

    Example:
        >>> log = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
        >>> with quiet_interrupt_notices():
        ...     log.filters[-1].filter(logging.makeLogRecord({"msg": "Received SIGTERM: 15"}))
        False
    """
    filters = [
        (logging.getLogger(name), _DropNotices(phrases)) for name, phrases in _NOTICES.items()
    ]
    for logger, notice_filter in filters:
        logger.addFilter(notice_filter)
    try:
        yield
    finally:
        for logger, notice_filter in filters:
            logger.removeFilter(notice_filter)


class InterruptGuard:
    """Handles SIGINT and SIGTERM while active and records the first one received.

    * While Lightning trains (its SIGTERM handler is installed, and calls the
      one it replaced, this one): SIGTERM and a first SIGINT stop the fit after
      the current batch, through Lightning's ``SIGTERMException``.
    * Otherwise, or on a second SIGINT: ``KeyboardInterrupt`` for SIGINT,
      ``SIGTERMException`` for SIGTERM, raised at once.

    The previous handlers come back when the block ends. A signal that is
    ignored when the block starts stays ignored; outside the main thread (where
    Python cannot install handlers) the guard does nothing.

    Example:
        >>> import os
        >>> with InterruptGuard() as guard:
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...     except SystemExit:  # SIGTERMException: nothing was training
        ...         pass
        >>> guard.received
        <Signals.SIGTERM: 15>
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._stop_requested = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                # An ignored signal stays ignored (a background job of a shell ignores
                # SIGINT, and Python itself then leaves Ctrl+C alone).
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            # None: the handler was installed outside Python; the default is the closest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        # Bound methods are made anew on each access: compare with ==, not `is`.
        training = sigterm_handler != self._handle and callable(sigterm_handler)
        if training and signum == signal.SIGTERM:
            return  # called by Lightning's handler, which has raised its flag
        if training and not self._stop_requested:
            self._stop_requested = True
            sigterm_handler(signal.SIGTERM, frame)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SIGTERMException
