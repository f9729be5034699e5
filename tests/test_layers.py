"""The package's layers: core and the test kit stay plain torch, and the import contracts hold."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fits import REPO

PLAIN_TORCH_MODULES = [
    "wd_lightning.core.analysis",
    "wd_lightning.core.errors",
    "wd_lightning.core.grouping",
    "wd_lightning.core.losses",
    "wd_lightning.core.manual",
    "wd_lightning.core.norms",
    "wd_lightning.core.param_walk",
    "wd_lightning.core.sharding",
    "wd_lightning.testing.contract",
    "wd_lightning.testing.strategies",
    "wd_lightning.testing.tolerance",
]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return set(result.stdout.split())


def test_param_groups_loads_no_lightning() -> None:
    loaded = _loaded_after("from wd_lightning.core import grouping; grouping.param_groups")
    assert "torch" in loaded
    assert not {"lightning", "pytorch_lightning", "torchmetrics"} & loaded


@pytest.mark.slow
def test_every_plain_torch_module_loads_no_lightning() -> None:
    loaded = _loaded_after("; ".join(f"import {module}" for module in PLAIN_TORCH_MODULES))
    assert not {"lightning", "pytorch_lightning", "torchmetrics"} & loaded
    assert not any(m.startswith(("wd_lightning.training", "wd_lightning.sweep")) for m in loaded)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("importlinter", reason="import-linter comes with the test extra")
    # The command installed beside this interpreter; it puts the working folder on the path.
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
    )


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "wd_lightning", tmp_path / "wd_lightning")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("core/norms.py", "import lightning", "core and testing are plain torch"),
        ("testing/tolerance.py", "import torchmetrics", "core and testing are plain torch"),
        ("core/grouping.py", "from wd_lightning.training import module", "plain torch"),
        (
            "training/data.py",
            "from wd_lightning.sweep import run",
            "training never imports the sweep",
        ),
        ("sweep/plots.py", "from wd_lightning import cli", "layers"),
    ],
)
def test_a_violation_breaks_the_contracts(
    tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    root = _copy_of_the_package(tmp_path)
    path = root / "wd_lightning" / module
    path.write_text(path.read_text() + f"\n{statement}  # the violation under test\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert broken and any(contract in line for line in broken), result.stdout
