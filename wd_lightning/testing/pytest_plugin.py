"""pytest fixtures that bring the weight-decay kit into another project's tests.

Enable it with one line in the project's ``conftest.py``::

    pytest_plugins = ["wd_lightning.testing.pytest_plugin"]

The module only defines fixtures: no command-line options, no hooks, no Hypothesis profile.
torch and Hypothesis are imported inside the fixtures, so the plugin itself adds no heavy
import to a test session that never uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture
def check_weight_decay() -> Callable[..., None]:
    """The contract checker :func:`wd_lightning.testing.check_weight_decay`.

    Example test::

        def test_my_optimizer_decays_like_l2(check_weight_decay):
            check_weight_decay(MyOptimizer, coupling="coupled")
    """
    from wd_lightning.testing.contract import check_weight_decay as checker

    return checker


@pytest.fixture
def assert_close_to_terms() -> Callable[..., None]:
    """The term-scaled comparison :func:`wd_lightning.testing.assert_close_to_terms`."""
    from wd_lightning.testing.tolerance import assert_close_to_terms as comparison

    return comparison


@pytest.fixture
def identify_weight_decay() -> Callable[..., object]:
    """The rule finder :func:`wd_lightning.testing.identify_weight_decay`.

    Example test::

        def test_my_optimizer_is_decoupled(identify_weight_decay):
            assert identify_weight_decay(MyOptimizer).contracts == ("decoupled",)
    """
    from wd_lightning.testing.identify import identify_weight_decay as finder

    return finder
