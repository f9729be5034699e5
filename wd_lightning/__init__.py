"""wd_lightning: weight decay done right in PyTorch Lightning, and proved right.

The public names below are imported on first use (see :mod:`wd_lightning._lazy`), so that
``import wd_lightning.testing`` does not pay for importing Lightning and torch up front.
"""

from __future__ import annotations

from wd_lightning._lazy import lazy_exports

__version__ = "0.1.0"

_all, __getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "wd_lightning.core.errors": (
            "BatchMismatchError",
            "CheckpointError",
            "InvalidArgumentError",
            "TrainingDivergedError",
            "TrainingInterruptedError",
        ),
        "wd_lightning.core.grouping": (
            "DecayRules",
            "GroupOverride",
            "ParamGroupsReport",
            "explain_param_groups",
            "param_groups",
        ),
        "wd_lightning.core.losses": ("HalfMSELoss",),
        "wd_lightning.training.callbacks": ("WeightNormMonitor",),
        "wd_lightning.training.data": (
            "SyntheticClassificationDataModule",
            "SyntheticRegressionDataModule",
        ),
        "wd_lightning.training.digits": ("DigitsDataModule",),
        "wd_lightning.training.models": ("MLP", "LinearRegression", "SmallConvNet"),
        "wd_lightning.training.module": ("WeightDecayModule",),
        "wd_lightning.training.random_state": ("RandomStateCheckpoint",),
        "wd_lightning.sweep.ensemble": ("WeightDecayEnsemble",),
        "wd_lightning.sweep.run": ("run_sweep",),
    },
)
__all__ = [*_all, "__version__"]
