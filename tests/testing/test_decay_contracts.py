"""Each named decay rule passes its correct implementation and catches its realistic slip;
each blind spot is covered by an optimizer the check must pass or must fail clearly."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.testing import (
    CONTRACTS,
    DecayContract,
    GradientWriteWarning,
    check_weight_decay,
    tensor_shapes,
)
from wd_lightning.testing.contract import _jumps_at_zero_decay
from wd_lightning.testing.decay_contracts import held, variants
from wd_lightning.testing.twin_runs import (
    GroupCase,
    ParamCase,
    RunOptions,
    Scenario,
    run_scenario,
    scenarios,
)

from . import broken_optimizers as broken
from . import contract_optimizers as rules


def _without_shrinking() -> settings:
    """The active profile without shrinking, so that a caught mistake is reported fast."""
    return settings(settings(), phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _double_strength() -> DecayContract:
    return DecayContract(
        "double-strength",
        "w ← (1 − 2·lr·λ)·w before the step",
        twin_input=lambda s: (s.weights * (1 - 2 * s.lr * s.weight_decay), s.grad),
    )


@pytest.mark.parametrize(
    ("factory", "contract"),
    [
        pytest.param(rules.IndependentDecaySGD, "independent", id="independent"),
        pytest.param(broken.UnscaledDecayAdamW, "independent", id="independent-adamw"),
        pytest.param(rules.CorrectedDecaySGD, "corrected", id="corrected"),
        pytest.param(rules.MaxCorrectedDecaySGD, "corrected-max", id="corrected-max"),
        pytest.param(rules.ProximalSGD, "proximal", id="proximal"),
        pytest.param(broken.DecayAfterUpdateAdamW, "decoupled-after", id="decoupled-after"),
        pytest.param(rules.LinearisedProximalSGD, "decoupled-after", id="decoupled-after-sgd"),
        pytest.param(rules.StepSizeDecayAdamW, "adaptive", id="adaptive"),
        pytest.param(broken.HandWrittenAdamW, "adaptive", id="decoupled-is-adaptive-too"),
        pytest.param(rules.DoubleStrengthDecaySGD, _double_strength(), id="user-rule"),
        # torch's Adafactor computes its relative step from the weights before shrinking them.
        pytest.param(torch.optim.Adafactor, "decoupled", id="Adafactor"),
    ],
)
def test_rule_passes_its_correct_implementation(factory: Any, contract: Any) -> None:
    check_weight_decay(factory, contract, max_examples=min(settings().max_examples, 50))


@pytest.mark.parametrize(
    ("factory", "contract"),
    [
        pytest.param(rules.LrScaledIndependentSGD, "independent", id="independent-times-lr"),
        pytest.param(rules.ConstructorLrCorrectedSGD, "corrected", id="corrected-default-lr"),
        pytest.param(rules.FirstLrCorrectedSGD, "corrected-max", id="corrected-max-first-lr"),
        pytest.param(rules.LinearisedProximalSGD, "proximal", id="proximal-linearised"),
        pytest.param(rules.ProximalSGD, "decoupled-after", id="decoupled-after-divides"),
        pytest.param(rules.PreconditionedDecayAdamW, "adaptive", id="adaptive-per-element"),
        pytest.param(broken.GrowingAdamW, "adaptive", id="adaptive-grows"),
        pytest.param(broken.HandWrittenAdamW, _double_strength(), id="user-rule"),
        pytest.param(rules.StepSizeDecayAdamW, "decoupled", id="adaptive-is-not-decoupled"),
    ],
)
def test_rule_catches_its_slip(factory: Any, contract: Any) -> None:
    with pytest.raises(AssertionError, match="broken at step"):
        check_weight_decay(factory, contract, hypothesis_settings=_without_shrinking())


def _adaptive_holds(factory: Any, second_group: ParamCase) -> bool:
    """Whether ``factory`` keeps the adaptive contract on 4 steps beside a plain first group."""
    ones = torch.ones(2, dtype=torch.float64)
    anchor = ParamCase(ones, (ones,) * 4)
    gradless = ParamCase(torch.tensor(1.0, dtype=torch.float64), (None,) * 4)
    scenario = Scenario(
        default_lr=1.0,
        default_weight_decay=0.0,
        groups=(GroupCase(0.5, 0.5, (anchor, gradless)), GroupCase(0.5, 0.5, (second_group,))),
        lr_multipliers=(1.0, 1.0, 1.0, 1.0),
    )
    options = RunOptions(factory, {}, {}, closure=False, steps=4, warmup_steps=16, ulps=64.0)
    adaptive = CONTRACTS["adaptive"]
    outcome = run_scenario(scenario, options, variants(adaptive), stop_at_first_mismatch=False)
    return held(adaptive, outcome.mismatches)


def _float64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_adaptive_step_size_is_fitted_where_the_decay_is_above_rounding() -> None:
    # A falsifying example found for a correct AdamW: by step 4 one element weighs 1e-31 and
    # has no gradient, so its decay is exact; the other weighs 2e-18 and moves by 0.3, so its
    # decay of 1e-18 is far below that step's rounding. Fitted with equal weights, the
    # rounding noise of the second element set the step size for the first.
    zeros = _float64(0.0, 0.0)
    grads = (zeros, zeros, _float64(0.0, 1.1117e-25), _float64(0.0, 1.0))
    tiny = ParamCase(_float64(1.5605e-31, 0.0), grads)
    assert _adaptive_holds(broken.HandWrittenAdamW, tiny)


def test_weighting_the_fit_still_rejects_a_step_size_per_element() -> None:
    # Both elements decay well above rounding, at different rates: no one step size fits.
    spread = ParamCase(_float64(3.0, 2.0), (_float64(1.0, 0.0),) * 4)
    assert _adaptive_holds(broken.HandWrittenAdamW, spread)
    assert not _adaptive_holds(rules.PreconditionedDecayAdamW, spread)


def test_every_named_rule_is_tested_both_ways() -> None:
    passing = {"coupled", "decoupled", "independent", "corrected", "corrected-max"}
    passing |= {"proximal", "decoupled-after", "adaptive"}
    assert passing == set(CONTRACTS)


def test_failure_shows_the_weights_and_the_contract_that_held() -> None:
    with pytest.raises(AssertionError) as caught:
        check_weight_decay(broken.DecayAfterUpdateAdamW, "decoupled", max_examples=10, steps=2)
    message = str(caught.value)
    assert "weights before the step: " in message
    assert "expected after the step: " in message
    assert "actual after the step:   " in message
    assert "held instead: decoupled-after" in message


def test_failure_says_when_no_named_contract_holds() -> None:
    with pytest.raises(AssertionError, match="No named contract held on this example"):
        check_weight_decay(broken.SignFlippedSGD, "coupled", max_examples=10, steps=1)


# --- gradients written in place ------------------------------------------------------------------


def test_grad_writes_are_reported_apart_from_the_decay_verdict() -> None:
    with pytest.warns(GradientWriteWarning, match=r"modified \.grad in place"):
        check_weight_decay(broken.GradMutatingSGD, "coupled", max_examples=10)


def test_a_grad_write_does_not_hide_a_wrong_decay() -> None:
    with pytest.raises(AssertionError, match="broken at step"):
        check_weight_decay(
            rules.GradMutatingSignFlippedSGD,
            "coupled",
            grad_writes="ignore",
            hypothesis_settings=_without_shrinking(),
        )


def test_grad_writes_can_be_ignored() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_weight_decay(broken.GradMutatingSGD, "coupled", max_examples=5, grad_writes="ignore")


def test_a_correct_optimizer_gives_no_grad_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_weight_decay(broken.HandWrittenSGD, "coupled", max_examples=5)


# --- nothing moved -------------------------------------------------------------------------------


def test_warmup_optimizer_is_run_until_it_moves() -> None:
    check_weight_decay(rules.WarmupSGD, "coupled", max_examples=10)


def test_warmup_longer_than_allowed_fails_clearly() -> None:
    with pytest.raises(AssertionError, match="never moved the weights in 5 steps"):
        check_weight_decay(
            rules.WarmupSGD,
            "coupled",
            max_examples=5,
            warmup_steps=1,
            hypothesis_settings=_without_shrinking(),
        )


def test_optimizer_that_never_moves_fails_clearly() -> None:
    with pytest.raises(AssertionError, match="never moved the weights"):
        check_weight_decay(
            rules.NeverMovingSGD, "coupled", hypothesis_settings=_without_shrinking()
        )


def test_ignored_weight_decay_fails_clearly() -> None:
    with pytest.raises(AssertionError, match="ignores weight_decay"):
        check_weight_decay(
            rules.SignDecayIgnoredSGD, "coupled", hypothesis_settings=_without_shrinking()
        )


# --- random numbers ------------------------------------------------------------------------------


def test_stochastic_optimizer_sees_the_same_random_numbers_in_every_run() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    check_weight_decay(rules.NoisySGD, "coupled", max_examples=10)
    # The check draws from a forked generator: the caller's random numbers are left alone.
    assert torch.equal(torch.get_rng_state(), before)


def test_shared_random_numbers_do_not_hide_a_mistake() -> None:
    with pytest.raises(AssertionError, match="broken at step"):
        check_weight_decay(
            rules.NoisySignFlippedSGD, "coupled", hypothesis_settings=_without_shrinking()
        )


# --- behaviour that changes at λ = 0 -------------------------------------------------------------


# A trust ratio rescales a one-element step to |w| whatever λ is, so these run on vectors.
VECTORS = st.sampled_from([(2,), (3,), (2, 2)])


def test_trust_ratio_applied_always_passes() -> None:
    check_weight_decay(rules.TrustRatioSGD, "coupled", shapes=VECTORS, max_examples=10)


# Seed 51 once drew lr = 1e-3 for the only decaying group, where the jump went unnamed.
@pytest.mark.parametrize("seed", [None, 51])
def test_trust_ratio_applied_only_with_decay_is_named_in_the_failure(seed: int | None) -> None:
    with pytest.raises(AssertionError, match="behaves differently at weight_decay=0"):
        check_weight_decay(
            rules.TrustRatioOnlyWithDecaySGD,
            "coupled",
            shapes=VECTORS,
            max_examples=10,
            seed=seed,
            hypothesis_settings=_without_shrinking(),
        )


@pytest.mark.parametrize(
    ("factory", "jumps"),
    [
        pytest.param(rules.TrustRatioOnlyWithDecaySGD, True, id="trust-ratio-only-with-decay"),
        pytest.param(rules.TrustRatioSGD, False, id="trust-ratio-always"),
        pytest.param(broken.HandWrittenSGD, False, id="plain-SGD"),
        pytest.param(torch.optim.Adam, False, id="Adam"),
    ],
)
def test_a_jump_at_zero_decay_shows_even_when_the_step_is_small(factory: Any, jumps: bool) -> None:
    # At lr = 1e-3 a trust ratio of 1.8 changes the step by 3e-3, below 1e-3 of the weights'
    # size: a probe measured against the weights took that for the effect of a tiny decay.
    weights = torch.tensor([8.0, 6.0], dtype=torch.float64)
    grad = torch.tensor([4.0, 4.0], dtype=torch.float64)
    group = GroupCase(lr=1e-3, weight_decay=0.4, params=(ParamCase(weights, (grad,)),))
    scenario = Scenario(0.5, 0.0, (group,), lr_multipliers=(1.0,))
    options = RunOptions(factory, {}, {}, closure=False, steps=1, warmup_steps=0, ulps=64.0)
    assert _jumps_at_zero_decay(scenario, options) is jumps


@settings(max_examples=20, deadline=None)
@given(
    scenario=scenarios(
        steps=3,
        dtypes=(torch.float64,),
        device=torch.device("cpu"),
        max_decay_per_step=0.5,
        shapes=None,
    )
)
def test_first_parameter_always_gives_the_decay_something_to_show(scenario: Scenario) -> None:
    # Two elements or more, none small, with a non-zero gradient at every step: a step
    # rescaled to the weights' norm cannot hide the decay, and there is always something to move.
    anchor = scenario.groups[0].params[0]
    assert anchor.init.numel() >= 2
    assert bool((anchor.init.abs() >= 0.5).all())
    assert all(grad is not None and bool((grad != 0).all()) for grad in anchor.grads)
    assert scenario.groups[0].weight_decay > 0


# --- shapes, dtypes, group flags, closures -------------------------------------------------------


def test_shapes_can_be_limited_to_what_the_optimizer_accepts() -> None:
    with pytest.raises(ValueError, match="only 2-d parameters"):
        check_weight_decay(rules.MatrixOnlySGD, "coupled", hypothesis_settings=_without_shrinking())
    matrices = tensor_shapes(min_dims=2, max_dims=2, max_side=3)
    check_weight_decay(rules.MatrixOnlySGD, "coupled", shapes=matrices, max_examples=10)


def test_mixed_dtypes_across_groups() -> None:
    both = (torch.float32, torch.float64)
    check_weight_decay(torch.optim.AdamW, "decoupled", dtype=both, max_examples=20)
    check_weight_decay(rules.DtypeBucketDecaySGD, "coupled", max_examples=10)
    with pytest.raises(AssertionError, match="broken at step"):
        check_weight_decay(
            rules.DtypeBucketDecaySGD,
            "coupled",
            dtype=both,
            hypothesis_settings=_without_shrinking(),
        )


def test_group_options_reach_every_group() -> None:
    with pytest.raises(ValueError, match="use_flag"):
        check_weight_decay(
            rules.FlaggedGroupsSGD, "coupled", hypothesis_settings=_without_shrinking()
        )
    check_weight_decay(
        rules.FlaggedGroupsSGD, "coupled", group_options={"use_flag": True}, max_examples=10
    )


def test_closure_for_optimizers_that_require_one() -> None:
    with pytest.raises(RuntimeError, match="requires a closure"):
        check_weight_decay(
            rules.ClosureOnlySGD, "coupled", hypothesis_settings=_without_shrinking()
        )
    check_weight_decay(rules.ClosureOnlySGD, "coupled", closure=True, max_examples=10)
    check_weight_decay(torch.optim.Adam, "coupled", closure=True, max_examples=10)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": ""}, "name='' is not allowed"),
        ({"twin_input": "shrink"}, "twin_input='shrink' is not allowed"),
        ({"expected": None}, "expected=None is not allowed"),
    ],
)
def test_a_contract_of_ones_own_is_validated(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        DecayContract(**{"name": "mine", "statement": "w ← w", **arguments})
