"""The Python examples of the README and of the docs pages run, and print what they show."""

import contextlib
import io
import re

import pytest

from tests.fits import REPO

README = (REPO / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((REPO / "docs").glob("*.md"))}
# Everything a reader is shown: the README and every page of the documentation site.
SHOWN = "\n".join([README, *DOCS.values()])
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", SHOWN, flags=re.DOTALL)


def test_readme_has_python_examples():
    assert PYTHON_BLOCKS


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_python_example_runs_and_prints_what_it_shows(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    # A line "# <text>" right after a print(...) line is the output it shows.
    shown = re.findall(r"^print\(.*\)\n# (.*)$", block, flags=re.MULTILINE)
    printed = output.getvalue().splitlines()
    for expected in shown:
        assert expected in printed, f"README shows {expected!r}, the code prints {printed!r}"


def test_grouping_comparison_table_is_current():
    import runpy

    script = runpy.run_path(str(REPO / "examples" / "compare_grouping_rules.py"))
    assert script["comparison_table"]() in DOCS["grouping.md"]


def test_explain_output_in_readme_is_current():
    from wd_lightning import explain_param_groups
    from wd_lightning.testing.model_zoo import WrappedViT

    assert str(explain_param_groups(WrappedViT(), 0.05)) in DOCS["grouping.md"]


def test_readme_links_to_existing_docs_pages():
    linked = re.findall(r"\]\(docs/([\w.-]+\.md)\)", README)
    # Every page linked exists, and every page but the site's home is linked.
    assert set(linked) == set(DOCS) - {"index.md"}


def test_the_test_command_ci_runs_is_the_readmes():
    command = 'pip install -e ".[test]" && pip install --no-deps timm==1.0.31 && pytest'
    assert command in README
    assert command in (REPO / ".ci" / "run").read_text()


def test_timescale_report_shown_is_the_book_runs():
    from wd_lightning import LinearRegression

    module = LinearRegression()  # the book's λ = 3, SGD at lr 0.003; 4 steps per epoch
    report = module.param_groups_report.summary(module.configure_optimizers(), steps_per_epoch=4)
    assert report in SHOWN
