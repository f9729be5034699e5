"""The term-scaled tolerance accepts correct float32 updates that assert_close rejects."""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import assume, given

from wd_lightning.core.manual import sgd_step
from wd_lightning.testing import (
    DecayHyperparameters,
    ParamAndGrads,
    assert_close_to_terms,
    decay_hyperparameters,
    params_and_grads,
    sgd_terms_magnitude,
    terms_magnitude,
)
from wd_lightning.testing import tolerance as tolerance_module

# Found by Hypothesis: the update cancels to ≈ −0.98 from terms of ≈ 820.
CANCELLING = ParamAndGrads(
    param=torch.tensor([-823.045166015625]), grads=(torch.tensor([-821.9805908203125]),)
)
CANCELLING_HYPER = DecayHyperparameters(lr=1.0, weight_decay=1e-4)


def _torch_sgd_step(run: ParamAndGrads, hyper: DecayHyperparameters) -> torch.Tensor:
    param = torch.nn.Parameter(run.param.clone())
    param.grad = run.grads[0].clone()
    torch.optim.SGD([param], lr=hyper.lr, weight_decay=hyper.weight_decay).step()
    return param.detach()


def _exact_step(run: ParamAndGrads, hyper: DecayHyperparameters) -> torch.Tensor:
    exact, _ = sgd_step(
        run.param.double(), run.grads[0].double(), lr=hyper.lr, weight_decay=hyper.weight_decay
    )
    return exact


def test_docstring_examples_run() -> None:
    results = doctest.testmod(tolerance_module)
    assert results.attempted > 0
    assert results.failed == 0


def test_assert_close_defaults_reject_a_correct_float32_update() -> None:
    result = _torch_sgd_step(CANCELLING, CANCELLING_HYPER)
    exact = _exact_step(CANCELLING, CANCELLING_HYPER)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(result, exact.float())
    magnitude = sgd_terms_magnitude(
        CANCELLING.param, CANCELLING.grads[0], lr=1.0, weight_decay=1e-4
    )
    assert_close_to_terms(result, exact, magnitude=magnitude)


@given(run=params_and_grads(steps=1), hyper=decay_hyperparameters())
def test_accepts_every_correct_float32_sgd_step(
    run: ParamAndGrads, hyper: DecayHyperparameters
) -> None:
    magnitude = sgd_terms_magnitude(
        run.param, run.grads[0], lr=hyper.lr, weight_decay=hyper.weight_decay
    )
    assert_close_to_terms(_torch_sgd_step(run, hyper), _exact_step(run, hyper), magnitude=magnitude)


@given(run=params_and_grads(steps=1), hyper=decay_hyperparameters(allow_zero_decay=False))
def test_rejects_a_step_that_forgets_the_decay(
    run: ParamAndGrads, hyper: DecayHyperparameters
) -> None:
    without_decay = _torch_sgd_step(run, DecayHyperparameters(hyper.lr, 0.0))
    exact = _exact_step(run, hyper)
    magnitude = sgd_terms_magnitude(
        run.param, run.grads[0], lr=hyper.lr, weight_decay=hyper.weight_decay
    )
    # The missing term ηλw must stand out from rounding somewhere: not when w is tiny next
    # to η·g or to the underflow floor (then forgetting the decay is within float32 precision,
    # and rightly accepted).
    info = torch.finfo(torch.float32)
    rounding = info.eps * magnitude + info.tiny
    assume(bool((hyper.decay_per_step * run.param.abs() > 100 * rounding).any()))
    with pytest.raises(AssertionError, match="elements differ beyond"):
        assert_close_to_terms(without_decay, exact, magnitude=magnitude)


def test_boundary_is_ulps_times_eps_times_magnitude() -> None:
    eps = torch.finfo(torch.float64).eps
    expected = torch.tensor([1.0], dtype=torch.float64)
    just_inside = expected + 3.9 * eps * 10.0
    just_outside = expected + 4.1 * eps * 10.0
    assert_close_to_terms(just_inside, expected, magnitude=10.0, ulps=4)
    with pytest.raises(AssertionError, match=r"Worst at index \(0,\)"):
        assert_close_to_terms(just_outside, expected, magnitude=10.0, ulps=4)


def test_uses_the_coarser_of_the_two_dtypes() -> None:
    # A float32 result against a float64 reference may be off by float32 rounding.
    expected = torch.tensor([1.0], dtype=torch.float64)
    actual = torch.tensor([1.0 + 2**-23], dtype=torch.float32)
    assert_close_to_terms(actual, expected, magnitude=1.0, ulps=1)


def test_matching_infinities_pass_but_nan_never_does() -> None:
    inf = torch.tensor([float("inf")])
    assert_close_to_terms(inf, inf.clone(), magnitude=1.0)
    nan = torch.tensor([float("nan")])
    with pytest.raises(AssertionError):
        assert_close_to_terms(nan, nan.clone(), magnitude=1.0)
    with pytest.raises(AssertionError):
        assert_close_to_terms(inf, -inf, magnitude=1.0)


def test_shape_mismatch_is_an_assertion_error() -> None:
    with pytest.raises(AssertionError, match="shape"):
        assert_close_to_terms(torch.zeros(2), torch.zeros(3), magnitude=1.0)


def test_rejects_non_positive_ulps() -> None:
    with pytest.raises(ValueError, match=r"ulps=.* is not allowed"):
        assert_close_to_terms(torch.zeros(1), torch.zeros(1), magnitude=1.0, ulps=0)


def test_terms_magnitude_adds_absolute_values_and_needs_a_tensor() -> None:
    total = terms_magnitude(torch.tensor([-1.0, 2.0]), 0.5, torch.tensor([3.0, -4.0]))
    torch.testing.assert_close(total, torch.tensor([4.5, 6.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"terms=.* expected at least one tensor"):
        terms_magnitude(1.0, 2.0)
