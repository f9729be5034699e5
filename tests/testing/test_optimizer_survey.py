"""The kit against real optimizers: every torch.optim variant and a pinned third-party set.

Each row of ``examples/optimizer_survey.py`` states the rule an optimizer documents; the kit
must report exactly that, or the row must name the finding that explains the difference
(each such finding has a minimal reproduction in docs/optimizer-rules.md). Optimizers of a
library that is not installed are skipped; CI installs the ``optimizers`` extra.
"""

from __future__ import annotations

import runpy

import pytest

from tests.fits import REPO

SURVEY = runpy.run_path(str(REPO / "examples" / "optimizer_survey.py"), run_name="survey")
ENTRIES = SURVEY["ENTRIES"]


def _ids(index: int) -> str:
    entry = ENTRIES[index]
    options = "-".join(f"{k}={v}" for k, v in entry.kwargs.items())
    return f"{entry.library}.{entry.name}" + (f"-{options}" if options else "")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=_ids)
def test_reports_the_documented_rule_or_a_named_finding(index: int) -> None:
    entry = ENTRIES[index]
    report = SURVEY["identify"](index)
    if report is None:
        pytest.skip(f"{entry.library} is not installed (pip install -e '.[optimizers]')")
    # A row that differs from the documentation names the finding (reproduced in the docs).
    assert entry.expected in SURVEY["reported"](report).split(" and "), str(report)


@pytest.mark.slow
def test_readme_table_is_current() -> None:
    readme = (REPO / "docs" / "optimizer-rules.md").read_text()
    table = SURVEY["table"]()
    if any(SURVEY["identify"](i) is None for i in range(len(ENTRIES))):
        pytest.skip("not every surveyed library is installed (pip install -e '.[optimizers]')")
    shown = set(readme.splitlines())
    assert [row for row in table.splitlines() if row not in shown] == []
