"""wd_lightning: weight decay done right in PyTorch Lightning, and proved right."""

from wd_lightning.callbacks import WeightNormMonitor
from wd_lightning.data import SyntheticRegressionDataModule
from wd_lightning.errors import InvalidArgumentError, TrainingDivergedError
from wd_lightning.models import LinearRegression
from wd_lightning.module import HalfMSELoss, WeightDecayModule
from wd_lightning.param_groups import param_groups

__version__ = "0.1.0"

__all__ = [
    "HalfMSELoss",
    "InvalidArgumentError",
    "LinearRegression",
    "SyntheticRegressionDataModule",
    "TrainingDivergedError",
    "WeightDecayModule",
    "WeightNormMonitor",
    "__version__",
    "param_groups",
]
