"""A reusable kit for testing weight decay: strategies, tolerances and a contract checker.

The names below are imported on first use, so that importing this package (for example
through the pytest plugin) loads neither torch nor Hypothesis until a test needs them.

Example:
    >>> import torch
    >>> from wd_lightning.testing import check_weight_decay
    >>> check_weight_decay(torch.optim.SGD, "coupled", max_examples=5)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wd_lightning.testing.contract import (
        COUPLINGS,
        DEFAULT_MAX_EXAMPLES,
        Coupling,
        GradientWriteWarning,
        check_weight_decay,
    )
    from wd_lightning.testing.decay_contracts import CONTRACTS, DecayContract, DecayStep
    from wd_lightning.testing.identify import DecayIdentification, identify_weight_decay
    from wd_lightning.testing.profiles import (
        PROFILE_ENV_VAR,
        PROFILES,
        load_profile_from_env,
        register_profiles,
    )
    from wd_lightning.testing.strategies import (
        DecayHyperparameters,
        ParamAndGrads,
        adam_options,
        decay_hyperparameters,
        float_dtypes,
        params_and_grads,
        sgd_options,
        tensor_shapes,
        tensors,
    )
    from wd_lightning.testing.tolerance import (
        DEFAULT_ULPS,
        assert_close_to_terms,
        sgd_terms_magnitude,
        terms_magnitude,
    )

# Public name -> submodule that defines it.
_EXPORTS = {
    "COUPLINGS": "contract",
    "DEFAULT_MAX_EXAMPLES": "contract",
    "Coupling": "contract",
    "check_weight_decay": "contract",
    "GradientWriteWarning": "contract",
    "CONTRACTS": "decay_contracts",
    "DecayContract": "decay_contracts",
    "DecayStep": "decay_contracts",
    "DecayIdentification": "identify",
    "identify_weight_decay": "identify",
    "PROFILE_ENV_VAR": "profiles",
    "PROFILES": "profiles",
    "load_profile_from_env": "profiles",
    "register_profiles": "profiles",
    "DecayHyperparameters": "strategies",
    "ParamAndGrads": "strategies",
    "adam_options": "strategies",
    "decay_hyperparameters": "strategies",
    "float_dtypes": "strategies",
    "params_and_grads": "strategies",
    "sgd_options": "strategies",
    "tensor_shapes": "strategies",
    "tensors": "strategies",
    "DEFAULT_ULPS": "tolerance",
    "assert_close_to_terms": "tolerance",
    "sgd_terms_magnitude": "tolerance",
    "terms_magnitude": "tolerance",
}

__all__ = [
    "CONTRACTS",
    "COUPLINGS",
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_ULPS",
    "PROFILES",
    "PROFILE_ENV_VAR",
    "Coupling",
    "DecayContract",
    "DecayHyperparameters",
    "DecayIdentification",
    "DecayStep",
    "GradientWriteWarning",
    "ParamAndGrads",
    "adam_options",
    "assert_close_to_terms",
    "check_weight_decay",
    "decay_hyperparameters",
    "float_dtypes",
    "identify_weight_decay",
    "load_profile_from_env",
    "params_and_grads",
    "register_profiles",
    "sgd_options",
    "sgd_terms_magnitude",
    "tensor_shapes",
    "tensors",
    "terms_magnitude",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
