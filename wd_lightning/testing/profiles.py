"""Hypothesis profiles for the property tests, picked by an environment variable.

* ``dev`` (default): quick feedback while editing.
* ``ci``: derandomised, so a run is reproducible and a red build is not a lucky draw.
* ``thorough``: thousands of examples per property, for a scheduled or pre-release run.

Every profile sets ``deadline=None``: the first call into torch can take most of a second,
which Hypothesis would otherwise report as a flaky deadline failure.

Nothing is registered on import; a test suite calls :func:`register_profiles` and
:func:`load_profile_from_env` from its ``conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hypothesis import HealthCheck, settings

from wd_lightning.core.errors import check_one_of

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_ENV_VAR",
    "load_profile_from_env",
    "register_profiles",
]

PROFILE_ENV_VAR = "WD_LIGHTNING_HYPOTHESIS_PROFILE"
DEFAULT_PROFILE = "dev"
PROFILES: tuple[str, ...] = ("ci", "dev", "thorough")


def register_profiles() -> None:
    """Register the ``ci``, ``dev`` and ``thorough`` profiles with Hypothesis.

    Calling it again re-registers the same settings, so it is safe from several conftests.

    Example:
        >>> from hypothesis import settings
        >>> register_profiles()
        >>> settings.get_profile("thorough").max_examples
        2000
    """
    settings.register_profile(
        "ci",
        max_examples=20,
        derandomize=True,
        # Derandomised runs replay the same examples, so a database would only add files.
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", max_examples=10, deadline=None)
    settings.register_profile(
        "thorough",
        max_examples=2000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def load_profile_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Load the profile named by ``WD_LIGHTNING_HYPOTHESIS_PROFILE``.

    Without it the profile is ``ci`` when the ``CI`` variable is set (as CI
    services do), else ``dev``.

    Args:
        environ: where to read the variable; ``os.environ`` when omitted.

    Returns:
        The name of the profile now active.

    Raises:
        ValueError: if the variable names a profile other than ``ci``, ``dev`` or ``thorough``.

    Example:
        >>> from hypothesis import settings
        >>> previous = settings.get_current_profile_name()
        >>> load_profile_from_env({"WD_LIGHTNING_HYPOTHESIS_PROFILE": "ci"})
        'ci'
        >>> settings().derandomize
        True
        >>> load_profile_from_env({})
        'dev'
        >>> load_profile_from_env({"CI": "true"})
        'ci'
        >>> settings.load_profile(previous)
    """
    environ = os.environ if environ is None else environ
    name = environ.get(PROFILE_ENV_VAR, "") or ("ci" if environ.get("CI") else DEFAULT_PROFILE)
    check_one_of(PROFILE_ENV_VAR, name, PROFILES)
    register_profiles()
    settings.load_profile(name)
    return name
