"""The hand-written updates in wd_lightning.core.manual: values worked out on paper, purity, checks.

Agreement with torch.optim is the property suite's job (test_weight_decay_properties.py).
"""

from __future__ import annotations

import dataclasses
import doctest
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from wd_lightning.core import manual
from wd_lightning.core.manual import (
    AdamState,
    SGDState,
    adam_step,
    adamw_step,
    decay_factor,
    l2_penalty,
    sgd_step,
)
from wd_lightning.testing import (
    assert_close_to_terms,
    decay_hyperparameters,
    params_and_grads,
    sgd_options,
)

F64 = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_docstring_examples_run() -> None:
    results = doctest.testmod(manual, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0
    assert results.failed == 0


def test_article_step_shrinks_by_0_991() -> None:
    new_w, _ = sgd_step(_t(2.0), _t(0.0), lr=0.003, weight_decay=3.0)
    assert new_w.item() == pytest.approx(2.0 * 0.991, rel=1e-15)
    assert decay_factor(0.003, 3.0) == pytest.approx(0.991, rel=1e-15)


def test_momentum_buffer_starts_at_the_first_direction_then_accumulates() -> None:
    # μ = 0.5, τ = 0, λ = 1, lr = 0.1, w₀ = 1, g = 0 on both steps.
    # Step 1: d = λw₀ = 1, b = d = 1 (no zero start), w₁ = 1 − 0.1 = 0.9.
    # Step 2: d = 0.9, b = 0.5·1 + 0.9 = 1.4, w₂ = 0.9 − 0.14 = 0.76.
    w1, state = sgd_step(_t(1.0), _t(0.0), lr=0.1, weight_decay=1.0, momentum=0.5)
    assert state.momentum_buffer is not None
    assert state.momentum_buffer.item() == pytest.approx(1.0)
    w2, state = sgd_step(w1, _t(0.0), state, lr=0.1, weight_decay=1.0, momentum=0.5)
    assert w1.item() == pytest.approx(0.9)
    assert state.momentum_buffer.item() == pytest.approx(1.4)
    assert w2.item() == pytest.approx(0.76)


def test_dampening_scales_later_directions_only() -> None:
    # Step 1 ignores τ: b = g = 2. Step 2: b = 0.5·2 + (1 − 0.25)·2 = 2.5.
    _, state = sgd_step(_t(0.0), _t(2.0), lr=0.1, momentum=0.5, dampening=0.25)
    _, state = sgd_step(_t(0.0), _t(2.0), state, lr=0.1, momentum=0.5, dampening=0.25)
    assert state.momentum_buffer is not None
    assert state.momentum_buffer.item() == pytest.approx(2.5)


def test_nesterov_looks_ahead_by_momentum_times_buffer() -> None:
    # First step: b = g = 1, the step uses g + μ·b = 1.5, so w = 0 − 0.1·1.5.
    new_w, _ = sgd_step(_t(0.0), _t(1.0), lr=0.1, momentum=0.5, nesterov=True)
    assert new_w.item() == pytest.approx(-0.15)


def test_maximize_flips_the_gradient_but_not_the_decay() -> None:
    # d = −g + λw = −1 + 2 = 1, so w = 1 − 0.1·1 = 0.9: ascent on the loss, decay still shrinks.
    new_w, _ = sgd_step(_t(1.0), _t(1.0), lr=0.1, weight_decay=2.0, maximize=True)
    assert new_w.item() == pytest.approx(0.9)
    decayed_only, _ = adamw_step(_t(1.0), _t(0.0), lr=0.1, weight_decay=2.0, maximize=True)
    assert decayed_only.item() == pytest.approx(0.8)


def test_first_adam_step_has_size_lr_whatever_the_gradient_scale() -> None:
    # m̂ = g and v̂ = g² after one step, so the step is lr·g/(|g| + ε) ≈ lr·sign(g).
    new_w, state = adam_step(_t(0.0, 0.0), _t(1e-3, -1e3), lr=0.01, eps=0.0)
    torch.testing.assert_close(new_w, _t(-0.01, 0.01))
    assert state.step == 1


def test_adam_l2_decay_is_normalised_but_adamw_decay_is_not() -> None:
    # A large weight with a zero data gradient: Adam's L2 step is about lr whatever λ is,
    # AdamW removes the fraction lr·λ of the weight.
    w, g = _t(100.0), _t(0.0)
    adam_w, _ = adam_step(w, g, lr=0.01, weight_decay=0.1)
    adamw_w, _ = adamw_step(w, g, lr=0.01, weight_decay=0.1)
    assert adam_w.item() == pytest.approx(100.0 - 0.01)
    assert adamw_w.item() == pytest.approx(100.0 * (1 - 0.01 * 0.1))


def test_l2_penalty_gradient_is_weight_decay_times_weight() -> None:
    w = _t(3.0, -4.0).requires_grad_()
    penalty = l2_penalty(w, 0.5)
    penalty.backward()
    assert penalty.item() == pytest.approx(0.25 * 25.0)
    torch.testing.assert_close(w.grad, _t(1.5, -2.0))


@given(
    run=params_and_grads(steps=1, max_steps=4, dtype=F64),
    hyper=decay_hyperparameters(),
    options=sgd_options(),
)
def test_sgd_step_leaves_its_inputs_alone(run: Any, hyper: Any, options: dict[str, Any]) -> None:
    param_copy = run.param.clone()
    state = None
    for grad in run.grads:
        grad_copy = grad.clone()
        before = state
        buffer_copy = None
        if before is not None and before.momentum_buffer is not None:
            buffer_copy = before.momentum_buffer.clone()
        _, state = sgd_step(
            run.param, grad, state, lr=hyper.lr, weight_decay=hyper.weight_decay, **options
        )
        assert torch.equal(grad, grad_copy)
        if buffer_copy is not None:
            assert torch.equal(before.momentum_buffer, buffer_copy)
    assert torch.equal(run.param, param_copy)


@given(run=params_and_grads(steps=1, max_steps=3, dtype=F64), hyper=decay_hyperparameters())
def test_adam_steps_leave_their_inputs_alone(run: Any, hyper: Any) -> None:
    for step in (adam_step, adamw_step):
        param_copy, state = run.param.clone(), None
        for grad in run.grads:
            grad_copy = grad.clone()
            moments = None if state is None else (state.exp_avg.clone(), state.exp_avg_sq.clone())
            _, new_state = step(
                run.param, grad, state, lr=hyper.lr, weight_decay=hyper.weight_decay
            )
            assert torch.equal(grad, grad_copy)
            if state is not None and moments is not None:
                assert torch.equal(state.exp_avg, moments[0])
                assert torch.equal(state.exp_avg_sq, moments[1])
            state = new_state
        assert torch.equal(run.param, param_copy)


@given(run=params_and_grads(steps=1, dtype=F64), hyper=decay_hyperparameters())
def test_sgd_step_is_the_article_equation(run: Any, hyper: Any) -> None:
    (grad,) = run.grads
    new_w, _ = sgd_step(run.param, grad, lr=hyper.lr, weight_decay=hyper.weight_decay)
    article = decay_factor(hyper.lr, hyper.weight_decay) * run.param - hyper.lr * grad
    magnitude = run.param.abs() + hyper.lr * grad.abs() + hyper.decay_per_step * run.param.abs()
    assert_close_to_terms(new_w, article, magnitude=magnitude)


@given(run=params_and_grads(steps=1, max_steps=4, dtype=F64), lr=st.floats(1e-4, 1.0))
def test_adam_and_adamw_agree_without_decay(run: Any, lr: float) -> None:
    adam_state = adamw_state = None
    adam_w = adamw_w = run.param
    for grad in run.grads:
        adam_w, adam_state = adam_step(adam_w, grad, adam_state, lr=lr)
        adamw_w, adamw_state = adamw_step(adamw_w, grad, adamw_state, lr=lr, weight_decay=0.0)
    assert torch.equal(adam_w, adamw_w)


def test_states_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SGDState().momentum_buffer = _t(1.0)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        AdamState.initial(_t(1.0)).step = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sgd_step(_t(1.0), _t(1.0), lr=-0.1), "lr=.* is not allowed"),
        (
            lambda: sgd_step(_t(1.0), _t(1.0), lr=0.1, weight_decay=-1),
            "weight_decay=.* is not allowed",
        ),
        (lambda: sgd_step(_t(1.0), _t(1.0), lr=float("nan")), "lr=.* is not allowed"),
        (lambda: sgd_step(_t(1.0), _t(1.0), lr=0.1, momentum=-0.5), "momentum=.* is not allowed"),
        (lambda: sgd_step(_t(1.0), _t(1.0), lr=0.1, dampening=2.0), "dampening=.* is not allowed"),
        (
            lambda: sgd_step(_t(1.0), _t(1.0), lr=0.1, nesterov=True),
            "nesterov=True is not allowed: expected momentum > 0",
        ),
        (
            lambda: sgd_step(_t(1.0), _t(1.0), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
            "nesterov=True is not allowed: expected momentum > 0",
        ),
        (lambda: sgd_step(_t(1.0), _t(1.0, 2.0), lr=0.1), "grad=.* expected the shape of param"),
        (
            lambda: adam_step(_t(1.0), _t(1.0), lr=0.1, betas=(0.9, 1.0)),
            r"betas\[1\]=1.0 is not allowed",
        ),
        (lambda: adamw_step(_t(1.0), _t(1.0), lr=0.1, eps=-1e-8), "eps=.* is not allowed"),
        (lambda: adamw_step(_t(1.0), _t(1.0, 2.0), lr=0.1), "grad=.* expected the shape of param"),
        (lambda: decay_factor(0.1, -3.0), "weight_decay=.* is not allowed"),
        (lambda: l2_penalty(_t(1.0), -3.0), "weight_decay=.* is not allowed"),
    ],
)
def test_rejects_out_of_range_arguments(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
