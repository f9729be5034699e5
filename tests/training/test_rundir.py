"""Run directories are claimed atomically, and a failed run removes only its own."""

import os
import subprocess
import sys
from types import SimpleNamespace

from tests.fits import REPO
from wd_lightning.training.rundir import (
    ClaimingTensorBoardLogger,
    claim_version_dir,
    discard_unstarted_run,
)


def test_claims_never_share_a_version(tmp_path):
    versions = [claim_version_dir(str(tmp_path))[0] for _ in range(3)]
    (tmp_path / "version_7").mkdir()  # made by someone else meanwhile
    assert versions == [0, 1, 2]
    assert claim_version_dir(str(tmp_path), first=7)[0] == 8


def test_loggers_in_one_folder_claim_distinct_directories(tmp_path):
    first, second = ClaimingTensorBoardLogger(tmp_path), ClaimingTensorBoardLogger(tmp_path)
    # Both pick their version before either has written anything.
    assert (first.version, second.version) == (0, 1)
    assert first.claimed_dir != second.claimed_dir
    assert os.path.isdir(first.claimed_dir) and os.path.isdir(second.claimed_dir)


def test_a_given_version_is_not_claimed(tmp_path):
    logger = ClaimingTensorBoardLogger(tmp_path, version="mine")
    assert logger.log_dir.endswith("mine") and logger.claimed_dir is None


def _trainer(*loggers, step=0):
    return SimpleNamespace(is_global_zero=True, global_step=step, loggers=list(loggers))


def test_only_the_claimed_directory_is_removed(tmp_path):
    other = ClaimingTensorBoardLogger(tmp_path)
    ours = ClaimingTensorBoardLogger(tmp_path)
    for logger in (other, ours):
        logger.experiment  # noqa: B018 - writes the event file, as a fit's setup does
    assert discard_unstarted_run(_trainer(ours)) == [ours.claimed_dir]
    assert os.path.isdir(other.claimed_dir) and not os.path.exists(ours.claimed_dir)
    # The last run in the folder takes the folder with it.
    assert discard_unstarted_run(_trainer(other)) == [other.claimed_dir]
    assert not (tmp_path / "lightning_logs").exists()


def test_a_plain_loggers_directory_is_never_removed(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    logger.experiment  # noqa: B018
    assert discard_unstarted_run(_trainer(logger)) == []
    assert os.path.isdir(logger.log_dir)


def test_a_run_that_trained_or_saved_is_kept(tmp_path):
    logger = ClaimingTensorBoardLogger(tmp_path)
    logger.experiment  # noqa: B018
    assert discard_unstarted_run(_trainer(logger, step=3)) == []
    os.makedirs(os.path.join(logger.claimed_dir, "checkpoints"))
    open(os.path.join(logger.claimed_dir, "checkpoints", "last.ckpt"), "w").close()
    assert discard_unstarted_run(_trainer(logger)) == []
    assert os.path.isdir(logger.claimed_dir)


def test_two_fits_started_together_in_one_folder_both_finish(tmp_path):
    """Two real CLI processes pick their run directory at the same moment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    args = [
        sys.executable, "-m", "wd_lightning", "fit",
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "tests.fits.ArriveTogether",
        "--trainer.callbacks.folder", str(tmp_path / "barrier"),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [
        (p.wait(timeout=300), p.stdout.read().decode(), p.stderr.read().decode()) for p in processes
    ]
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    runs = sorted(path.name for path in (tmp_path / "lightning_logs").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        folder = tmp_path / "lightning_logs" / run
        assert (folder / "config.yaml").exists()
        assert (folder / "checkpoints" / "last.ckpt").exists()
    # Each process reports its own run.
    logs = sorted(
        line for _, out, _ in results for line in out.splitlines() if line.startswith("logs:")
    )
    assert len(logs) == 2 and "version_0" in logs[0] and "version_1" in logs[1]
