"""The documentation site builds from docs/ with warnings as errors (mkdocs build --strict)."""

import os
import subprocess
import sys

import pytest

from tests.fits import REPO


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e .[docs]")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # The reference is generated from the docstrings, examples included.
    assert "WeightDecayModule" in api and "highlight language-python" in api
