import os
import signal

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wd_lightning.training.interrupts import InterruptGuard


def send(signum: signal.Signals) -> None:
    os.kill(os.getpid(), signum)


@pytest.fixture
def lightning_training():
    """A SIGTERM handler shaped like Lightning's: it raises a flag, then calls the one before."""
    flags = []

    def install() -> None:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            flags.append(signum)
            previous(signum, frame)

        signal.signal(signal.SIGTERM, handler)

    return install, flags


def test_outside_training_a_signal_interrupts_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), InterruptGuard() as guard:
        send(signal.SIGINT)
    assert guard.received == signal.SIGINT
    with pytest.raises(SIGTERMException), InterruptGuard() as guard:
        send(signal.SIGTERM)
    assert guard.received == signal.SIGTERM
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_while_training_sigterm_and_a_first_sigint_only_raise_lightnings_flag(lightning_training):
    install, flags = lightning_training
    with InterruptGuard() as guard:
        install()
        send(signal.SIGTERM)
        assert flags == [signal.SIGTERM] and guard.received == signal.SIGTERM
        send(signal.SIGINT)  # the first Ctrl+C asks for the same stop
        assert flags == [signal.SIGTERM, signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            send(signal.SIGINT)  # the second one does not wait
    assert guard.received == signal.SIGTERM  # the first signal is the one reported


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard() as guard:
            send(signal.SIGINT)
        assert guard.received is None
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
