"""``python -m wd_lightning``: the same as the ``wd-lightning`` command."""

from wd_lightning.cli import main

if __name__ == "__main__":
    main()
