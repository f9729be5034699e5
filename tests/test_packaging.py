"""The built wheel ships the configs, and a bare ``--config NAME`` finds them outside a clone."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.fits import CONFIGS, REPO


@pytest.mark.slow
def test_wheel_ships_the_configs_and_they_are_found_by_name(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*pip_wheel, str(REPO), "--wheel-dir", str(tmp_path / "dist"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in CONFIGS.glob("*.yaml"):
        assert f"wd_lightning/configs/{config.name}" in names
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "installed")
    # Run from the unpacked wheel, in a folder with no configs/: the name must suffice.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "installed"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "wd_lightning", "fit", "--config", "d2l_no_decay", "--print_config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "weight_decay: 0.0" in result.stdout
    assert (
        str(tmp_path / "installed")
        in subprocess.run(
            [sys.executable, "-c", "import wd_lightning; print(wd_lightning.__file__)"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    )
