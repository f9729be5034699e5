"""wd_lightning: weight decay done right in PyTorch Lightning, and proved right."""

from wd_lightning.callbacks import WeightNormMonitor
from wd_lightning.data import SyntheticClassificationDataModule, SyntheticRegressionDataModule
from wd_lightning.errors import InvalidArgumentError, TrainingDivergedError
from wd_lightning.models import MLP, LinearRegression
from wd_lightning.module import HalfMSELoss, WeightDecayModule
from wd_lightning.param_groups import (
    DecayRules,
    GroupOverride,
    ParamGroupsReport,
    explain_param_groups,
    param_groups,
)

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "DecayRules",
    "GroupOverride",
    "HalfMSELoss",
    "InvalidArgumentError",
    "LinearRegression",
    "ParamGroupsReport",
    "SyntheticClassificationDataModule",
    "SyntheticRegressionDataModule",
    "TrainingDivergedError",
    "WeightDecayModule",
    "WeightNormMonitor",
    "__version__",
    "explain_param_groups",
    "param_groups",
]
