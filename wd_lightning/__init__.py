"""wd_lightning: weight decay done right in PyTorch Lightning, and proved right.

The public names below are imported on first use, so that ``import
wd_lightning.testing`` (and the pytest plugin, which every pytest run of a
project with this package installed loads) does not pay for importing
Lightning and torch up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "BatchMismatchError": "wd_lightning.core.errors",
    "CheckpointError": "wd_lightning.core.errors",
    "DigitsDataModule": "wd_lightning.training.digits",
    "DecayRules": "wd_lightning.core.grouping",
    "GroupOverride": "wd_lightning.core.grouping",
    "HalfMSELoss": "wd_lightning.training.module",
    "InvalidArgumentError": "wd_lightning.core.errors",
    "LinearRegression": "wd_lightning.training.models",
    "MLP": "wd_lightning.training.models",
    "ParamGroupsReport": "wd_lightning.core.grouping",
    "RandomStateCheckpoint": "wd_lightning.training.random_state",
    "SmallConvNet": "wd_lightning.training.models",
    "SyntheticClassificationDataModule": "wd_lightning.training.data",
    "SyntheticRegressionDataModule": "wd_lightning.training.data",
    "TrainingDivergedError": "wd_lightning.core.errors",
    "TrainingInterruptedError": "wd_lightning.core.errors",
    "WeightDecayEnsemble": "wd_lightning.sweep.ensemble",
    "WeightDecayModule": "wd_lightning.training.module",
    "WeightNormMonitor": "wd_lightning.training.callbacks",
    "explain_param_groups": "wd_lightning.core.grouping",
    "param_groups": "wd_lightning.core.grouping",
    "run_sweep": "wd_lightning.sweep.run",
}

__all__ = [
    "MLP",
    "BatchMismatchError",
    "CheckpointError",
    "DecayRules",
    "DigitsDataModule",
    "GroupOverride",
    "HalfMSELoss",
    "InvalidArgumentError",
    "LinearRegression",
    "ParamGroupsReport",
    "RandomStateCheckpoint",
    "SmallConvNet",
    "SyntheticClassificationDataModule",
    "SyntheticRegressionDataModule",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "WeightDecayEnsemble",
    "WeightDecayModule",
    "WeightNormMonitor",
    "__version__",
    "explain_param_groups",
    "param_groups",
    "run_sweep",
]

if TYPE_CHECKING:
    from wd_lightning.core.errors import (
        BatchMismatchError,
        CheckpointError,
        InvalidArgumentError,
        TrainingDivergedError,
        TrainingInterruptedError,
    )
    from wd_lightning.core.grouping import (
        DecayRules,
        GroupOverride,
        ParamGroupsReport,
        explain_param_groups,
        param_groups,
    )
    from wd_lightning.sweep.ensemble import WeightDecayEnsemble
    from wd_lightning.sweep.run import run_sweep
    from wd_lightning.training.callbacks import WeightNormMonitor
    from wd_lightning.training.data import (
        SyntheticClassificationDataModule,
        SyntheticRegressionDataModule,
    )
    from wd_lightning.training.digits import DigitsDataModule
    from wd_lightning.training.models import MLP, LinearRegression, SmallConvNet
    from wd_lightning.training.module import HalfMSELoss, WeightDecayModule
    from wd_lightning.training.random_state import RandomStateCheckpoint


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wd_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
