"""How another project meets the kit: the pytest plugin, its fixtures, and the profiles."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import wd_lightning.testing as kit
from wd_lightning.testing import profiles, pytest_plugin

PLUGIN = "wd_lightning.testing.pytest_plugin"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _python_path() -> str:
    """PYTHONPATH that finds this checkout from any working directory."""
    return os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture
def restore_hypothesis_profile() -> Iterator[None]:
    previous = settings.get_current_profile_name()
    yield
    settings.load_profile(previous)


def test_one_conftest_line_gives_a_project_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest
            import torch

            class ForgetfulSGD(torch.optim.SGD):
                # Claims coupled decay but never applies it.
                def step(self, closure=None):
                    for group in self.param_groups:
                        for p in group["params"]:
                            if p.grad is not None:
                                p.data.add_(p.grad, alpha=-group["lr"])

            def test_sgd_keeps_the_contract(check_weight_decay):
                check_weight_decay(torch.optim.SGD, "coupled", max_examples=5)

            def test_forgetful_sgd_is_caught(check_weight_decay):
                with pytest.raises(AssertionError, match="broken at step"):
                    check_weight_decay(ForgetfulSGD, "coupled", max_examples=10)

            def test_comparison_fixture(assert_close_to_terms):
                assert_close_to_terms(torch.ones(2), torch.ones(2), magnitude=1.0)

            def test_identify_fixture(identify_weight_decay):
                assert identify_weight_decay(torch.optim.AdamW, max_examples=3).contracts == (
                    "decoupled",
                )
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_the_plugin_changes_nothing_but_adds_fixtures(pytester: pytest.Pytester) -> None:
    # No hooks means no options, no profile loading, no collection changes.
    hooks = [name for name in vars(pytest_plugin) if name.startswith("pytest_")]
    assert hooks == []
    profile = settings.get_current_profile_name()
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            from hypothesis import settings

            def test_profile_untouched():
                assert settings.get_current_profile_name() == {profile!r}
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", PLUGIN, "-p", "no:cacheprovider", "--fixtures")
    result.stdout.fnmatch_lines(
        ["*check_weight_decay*", "*assert_close_to_terms*", "*identify_weight_decay*"]
    )
    result = pytester.runpytest_inprocess("-p", PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_importing_the_plugin_loads_neither_torch_nor_hypothesis() -> None:
    # An installed pytest11 plugin is imported by every test session of every project.
    heavy = "{'torch', 'hypothesis', 'lightning'}"
    code = f"import sys, {PLUGIN}; print(sorted({heavy} & set(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": _python_path()},
    )
    assert completed.stdout.strip() == "[]", (
        f"importing {PLUGIN} imported {completed.stdout.strip()}; every package on the way "
        "(wd_lightning/__init__.py included) must import its heavy dependencies lazily."
    )


@pytest.mark.parametrize(
    ("entry_point_name", "coexists"), [(PLUGIN, True), ("wd_lightning", False)]
)
def test_entry_point_must_be_named_after_the_module_to_coexist_with_the_conftest_line(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    entry_point_name: str,
    coexists: bool,
) -> None:
    # pytest registers an entry-point plugin under the entry point's name; a conftest that also
    # lists the module registers it under the module's name, and one module under two names is
    # an error. Naming the entry point after the module turns the second into a no-op.
    site = pytester.mkdir("site")
    dist_info = site / "wd_lightning_entry_point_check-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: wd-lightning-entry-point-check\nVersion: 0.0\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[pytest11]\n{entry_point_name} = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    pytester.makepyfile(
        "def test_fixture_is_there(request):\n"
        "    assert callable(request.getfixturevalue('check_weight_decay'))\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if coexists:
        result.stdout.fnmatch_lines(["plugins: *wd-lightning-entry-point-check*"])
        result.assert_outcomes(passed=1)
    else:
        assert result.ret != 0
        result.stderr.fnmatch_lines(["*already registered under a different name*"])


def test_pyproject_entry_point_is_named_after_the_module() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    entry_points = pyproject.get("project", {}).get("entry-points", {}).get("pytest11", {})
    ours = {name: target for name, target in entry_points.items() if target == PLUGIN}
    if not ours:
        pytest.skip("pyproject.toml does not declare the pytest11 entry point yet")
    assert ours == {PLUGIN: PLUGIN}


# --- Hypothesis profiles ------------------------------------------------------------------------


def test_profiles_and_package_docstring_examples_run(restore_hypothesis_profile: None) -> None:
    for module in (profiles, kit):
        results = doctest.testmod(module)
        assert results.attempted > 0, module.__name__
        assert results.failed == 0, module.__name__


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_every_profile_has_no_deadline(name: str) -> None:
    profiles.register_profiles()
    assert settings.get_profile(name).deadline is None


def test_profiles_differ_in_effort_and_ci_is_reproducible() -> None:
    profiles.register_profiles()
    dev, ci, thorough = (settings.get_profile(name) for name in ("dev", "ci", "thorough"))
    assert ci.derandomize
    assert dev.max_examples <= ci.max_examples < thorough.max_examples
    assert thorough.max_examples >= 1000


def test_profile_comes_from_the_environment(restore_hypothesis_profile: None) -> None:
    env = profiles.PROFILE_ENV_VAR
    assert profiles.load_profile_from_env({env: "thorough"}) == "thorough"
    assert settings.get_current_profile_name() == "thorough"
    assert profiles.load_profile_from_env({env: ""}) == profiles.DEFAULT_PROFILE
    with pytest.raises(ValueError, match=rf"{env}=.* is not allowed: expected one of"):
        profiles.load_profile_from_env({env: "nightly"})


def test_kit_exports_what_it_lists() -> None:
    for name in kit.__all__:
        assert getattr(kit, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        kit.nonexistent  # noqa: B018
