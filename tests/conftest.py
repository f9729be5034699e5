"""Shared test configuration: the Hypothesis profile named by WD_LIGHTNING_HYPOTHESIS_PROFILE."""

from wd_lightning.testing.profiles import load_profile_from_env

# pytester runs throw-away pytest sessions, used to test the kit's pytest plugin.
pytest_plugins = ["pytester"]

load_profile_from_env()
