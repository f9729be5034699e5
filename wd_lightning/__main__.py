"""``python -m wd_lightning``: the same as the ``wd-lightning`` command."""

import sys


def run() -> None:
    """Import the command line and run it.

    Importing Lightning and torch takes seconds; a Ctrl+C during them ends the
    program with the same one-line message as one during a run, not a traceback.
    """
    try:
        from wd_lightning.cli import main
    except KeyboardInterrupt:
        print("wd-lightning: interrupted by SIGINT", file=sys.stderr)
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
