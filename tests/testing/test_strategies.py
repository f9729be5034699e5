"""The strategies draw only valid inputs, reach the edges of their ranges, and check arguments."""

from __future__ import annotations

import doctest
import warnings
from typing import Any

import pytest
import torch
from hypothesis import find, given
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from wd_lightning.testing import (
    DecayHyperparameters,
    ParamAndGrads,
    adam_options,
    decay_hyperparameters,
    params_and_grads,
    sgd_options,
    tensor_shapes,
    tensors,
)
from wd_lightning.testing import strategies as strategies_module


def test_docstring_examples_run() -> None:
    with warnings.catch_warnings():
        # The examples call `.example()`, which Hypothesis reserves for interactive use.
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        results = doctest.testmod(strategies_module)
    assert results.attempted > 0
    assert results.failed == 0


@given(hyper=decay_hyperparameters(min_lr=1e-3, max_lr=0.5, max_decay_per_step=0.9))
def test_decay_per_step_stays_below_one_by_construction(hyper: DecayHyperparameters) -> None:
    assert 1e-3 <= hyper.lr <= 0.5
    assert hyper.weight_decay >= 0
    assert hyper.lr * hyper.weight_decay <= 0.9 * (1 + 1e-12)


def test_decay_per_step_reaches_the_top_of_its_range() -> None:
    # Nothing is filtered away, so products near the bound are found directly.
    found = find(
        decay_hyperparameters(max_decay_per_step=0.5), lambda hyper: hyper.decay_per_step > 0.49
    )
    assert found.decay_per_step <= 0.5 * (1 + 1e-12)


@given(hyper=decay_hyperparameters(allow_zero_decay=False))
def test_zero_decay_can_be_excluded(hyper: DecayHyperparameters) -> None:
    assert hyper.weight_decay > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(shape=tensor_shapes(max_dims=3, max_side=3), data=st.data())
def test_tensors_are_finite_bounded_and_of_their_shape_and_dtype(
    dtype: torch.dtype, shape: tuple[int, ...], data: st.DataObject
) -> None:
    drawn = data.draw(tensors(shape, dtype=dtype, max_magnitude=5.0))
    assert drawn.shape == shape
    assert drawn.dtype == dtype
    assert bool(torch.isfinite(drawn).all())
    assert bool((drawn.abs() <= 5.0).all())


@given(t=tensors((4,), dtype=torch.float32))
def test_float32_tensors_hold_values_exactly_representable_in_float32(t: torch.Tensor) -> None:
    assert torch.equal(t.double().float(), t)
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((t == 0) | (t.abs() >= tiny)).all()), "no subnormals"


@given(run=params_and_grads(steps=2, max_steps=5, dtype=torch.float64))
def test_params_and_grads_share_a_shape(run: ParamAndGrads) -> None:
    assert 2 <= len(run.grads) <= 5
    assert all(grad.shape == run.param.shape for grad in run.grads)
    assert all(grad.dtype == torch.float64 for grad in (run.param, *run.grads))


@given(options=sgd_options())
def test_sgd_options_are_accepted_by_torch(options: dict[str, Any]) -> None:
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, **options)
    if options["nesterov"]:
        assert options["momentum"] > 0 and options["dampening"] == 0


@given(options=sgd_options(allow_nesterov=False))
def test_sgd_options_can_exclude_nesterov(options: dict[str, Any]) -> None:
    assert options["nesterov"] is False


@given(options=adam_options())
def test_adam_options_are_accepted_by_torch(options: dict[str, Any]) -> None:
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1, **options)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: decay_hyperparameters(max_decay_per_step=1.0),
            "max_decay_per_step=.* is not allowed",
        ),
        (lambda: decay_hyperparameters(min_lr=0.0), "min_lr=0.0 is not allowed"),
        (
            lambda: decay_hyperparameters(min_lr=0.5, max_lr=0.1),
            "max_lr=0.1 is not allowed: expected a number >= min_lr",
        ),
        (lambda: tensors((2,), dtype=torch.float16), "dtype=.* is not allowed"),
        (lambda: tensors((2,), max_magnitude=0.0), "max_magnitude=.* is not allowed"),
        (lambda: tensors((-1,)), r"shape\[0\]=-1 is not allowed"),
        (lambda: params_and_grads(steps=0), "steps=.* is not allowed"),
        (
            lambda: params_and_grads(steps=3, max_steps=2),
            "max_steps=2 is not allowed: expected an integer >= 3",
        ),
        (lambda: params_and_grads(dtype=torch.int64), "dtype=.* is not allowed"),
        (lambda: tensor_shapes(min_dims=2, max_dims=1), "max_dims=.* is not allowed"),
        (lambda: tensor_shapes(max_side=0), "max_side=.* is not allowed"),
    ],
)
def test_rejects_bad_arguments_when_called(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
