"""A reusable kit for testing weight decay: strategies, tolerances and a contract checker.

The names below are imported on first use, so that importing this package (for example
through the pytest plugin) loads neither torch nor Hypothesis until a test needs them.

Example:
    >>> import torch
    >>> from wd_lightning.testing import check_weight_decay
    >>> check_weight_decay(torch.optim.SGD, "coupled", max_examples=5)
"""

from __future__ import annotations

from wd_lightning._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "wd_lightning.testing.contract": (
            "COUPLINGS",
            "DEFAULT_MAX_EXAMPLES",
            "Coupling",
            "GradientWriteWarning",
            "check_weight_decay",
        ),
        "wd_lightning.testing.decay_contracts": ("CONTRACTS", "DecayContract", "DecayStep"),
        "wd_lightning.testing.identify": ("DecayIdentification", "identify_weight_decay"),
        "wd_lightning.testing.profiles": (
            "PROFILE_ENV_VAR",
            "PROFILES",
            "load_profile_from_env",
            "register_profiles",
        ),
        "wd_lightning.testing.strategies": (
            "DecayHyperparameters",
            "ParamAndGrads",
            "adam_options",
            "decay_hyperparameters",
            "float_dtypes",
            "params_and_grads",
            "sgd_options",
            "tensor_shapes",
            "tensors",
        ),
        "wd_lightning.testing.tolerance": (
            "DEFAULT_ULPS",
            "assert_close_to_terms",
            "sgd_terms_magnitude",
            "terms_magnitude",
        ),
    },
)
