"""Properties of weight decay in torch.optim, checked against the hand-written updates.

The article's claim: with the penalty λ/2·‖w‖², each SGD step is w ← (1 − ηλ)·w − η·∇L, and
``weight_decay=λ`` does exactly that. Float32 runs are compared with a float64 reference built
from the same inputs, within a few eps times the size of the update's terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from torch import Tensor

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
    DecayHyperparameters,
    ParamAndGrads,
    adam_options,
    assert_close_to_terms,
    decay_hyperparameters,
    params_and_grads,
    sgd_options,
    tensors,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
F64 = torch.float64

# The article's experiment: lr = 0.003 and λ = 3, a factor 0.991 per step.
ARTICLE = DecayHyperparameters(lr=0.003, weight_decay=3.0)
ARTICLE_RUN = ParamAndGrads(
    param=torch.tensor([-2.0, -0.5, 0.0, 1.0, 13.5]),
    grads=(torch.tensor([0.5, -0.25, 0.0, 1.0, 2.0]),) * 4,
)
NO_MOMENTUM = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
# Values are drawn exactly representable in float32, then moved to each test's dtype.
RUNS = params_and_grads(steps=1, max_steps=5, dtype=torch.float32)


def _on(run: ParamAndGrads, dtype: torch.dtype, device: str) -> ParamAndGrads:
    return ParamAndGrads(
        param=run.param.to(device=device, dtype=dtype),
        grads=tuple(g.to(device=device, dtype=dtype) for g in run.grads),
    )


def _torch_trajectory(
    optimizer_class: Callable[..., torch.optim.Optimizer],
    run: ParamAndGrads,
    *,
    grad_scale: float = 1.0,
    **optimizer_kwargs: Any,
) -> list[Tensor]:
    """The weights after each step of a torch optimizer fed ``run.grads`` (times grad_scale)."""
    param = torch.nn.Parameter(run.param.clone())
    optimizer = optimizer_class([param], **optimizer_kwargs)
    trajectory = []
    for grad in run.grads:
        param.grad = grad * grad_scale
        optimizer.step()
        trajectory.append(param.detach().clone())
    return trajectory


def _manual_sgd(
    run: ParamAndGrads, *, lr: float, weight_decay: float, **options: Any
) -> tuple[list[Tensor], list[Tensor]]:
    """Float64 reference weights after each step, and the accumulated size of their terms."""
    param = run.param.to(F64)
    state: SGDState | None = None
    momentum = options.get("momentum", 0.0)
    trajectory, magnitudes, total = [], [], torch.zeros_like(param)
    for grad in run.grads:
        grad = grad.to(F64)
        previous = state.momentum_buffer if state and state.momentum_buffer is not None else 0.0
        new_param, state = sgd_step(param, grad, state, lr=lr, weight_decay=weight_decay, **options)
        buffer = state.momentum_buffer if state.momentum_buffer is not None else 0.0
        total = total + (
            param.abs()
            + new_param.abs()
            + lr * (grad.abs() + weight_decay * param.abs())
            + lr * (1 + momentum) * (abs(buffer) + momentum * abs(previous))
        )
        param = new_param
        trajectory.append(param)
        magnitudes.append(total)
    return trajectory, magnitudes


def _manual_adam(
    step: Callable[..., tuple[Tensor, AdamState]],
    run: ParamAndGrads,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """Float64 reference for Adam or AdamW, with the accumulated size of each step's terms.

    Adam divides by √v̂ + ε, so a rounding error δ in the gradient moves the step by about
    η·δ/(√v̂ + ε): the terms include η·(|g| + λ|w| + |m|)/(√v̂ + ε) for that reason.
    """
    param = run.param.to(F64)
    state: AdamState | None = None
    trajectory, magnitudes, total = [], [], torch.zeros_like(param)
    for grad in run.grads:
        grad = grad.to(F64)
        new_param, state = step(
            param, grad, state, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps
        )
        v_hat_sqrt = (state.exp_avg_sq / (1 - betas[1] ** state.step)).sqrt()
        m_hat = state.exp_avg / (1 - betas[0] ** state.step)
        sensitivity = (grad.abs() + weight_decay * param.abs() + m_hat.abs()) / (v_hat_sqrt + eps)
        total = total + (
            param.abs()
            + new_param.abs()
            + lr * weight_decay * param.abs()
            + lr * (1.0 + sensitivity)
        )
        param = new_param
        trajectory.append(param)
        magnitudes.append(total)
    return trajectory, magnitudes


def _assert_trajectories_close(
    actual: Sequence[Tensor], expected: Sequence[Tensor], magnitudes: Sequence[Tensor], ulps: float
) -> None:
    for step, (got, want, magnitude) in enumerate(zip(actual, expected, magnitudes, strict=True)):
        assert_close_to_terms(got, want, magnitude=magnitude, ulps=ulps, msg=f"step {step + 1}")


# --- SGD: the article's equation -------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(run=RUNS, hyper=decay_hyperparameters(), options=sgd_options(), maximize=st.booleans())
@example(run=ARTICLE_RUN, hyper=ARTICLE, options=NO_MOMENTUM, maximize=False)
def test_sgd_weight_decay_matches_the_manual_update(
    dtype: torch.dtype,
    device: str,
    run: ParamAndGrads,
    hyper: DecayHyperparameters,
    options: dict[str, Any],
    maximize: bool,
) -> None:
    run = _on(run, dtype, device)
    kwargs = {"lr": hyper.lr, "weight_decay": hyper.weight_decay, "maximize": maximize, **options}
    expected, magnitudes = _manual_sgd(run, **kwargs)
    actual = _torch_trajectory(torch.optim.SGD, run, **kwargs)
    _assert_trajectories_close(actual, expected, magnitudes, ulps=8)


def test_article_setting_shrinks_each_weight_by_0_991_per_step() -> None:
    param = torch.nn.Parameter(torch.ones(3, dtype=F64))
    optimizer = torch.optim.SGD([param], lr=ARTICLE.lr, weight_decay=ARTICLE.weight_decay)
    for _ in range(400):  # the book's 100 epochs of 4 steps, with no data gradient
        param.grad = torch.zeros_like(param)
        optimizer.step()
    torch.testing.assert_close(param.detach(), torch.full((3,), 0.991**400, dtype=F64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(run=RUNS, lr=st.floats(1e-4, 1.0), options=sgd_options())
def test_zero_weight_decay_is_plain_sgd(
    dtype: torch.dtype, device: str, run: ParamAndGrads, lr: float, options: dict[str, Any]
) -> None:
    run = _on(run, dtype, device)
    with_zero = _torch_trajectory(torch.optim.SGD, run, lr=lr, weight_decay=0.0, **options)
    without = _torch_trajectory(torch.optim.SGD, run, lr=lr, **options)
    for zero_step, plain_step in zip(with_zero, without, strict=True):
        assert torch.equal(zero_step, plain_step)
    if options["momentum"] == 0:
        # w_k = w_0 − η·(g_1 + … + g_k), the update with the decay term gone.
        plain, magnitude = run.param.to(F64), run.param.abs().to(F64)
        for got, grad in zip(with_zero, run.grads, strict=True):
            plain = plain - lr * grad.to(F64)
            magnitude = magnitude + plain.abs() + lr * grad.abs().to(F64)
            assert_close_to_terms(got, plain, magnitude=magnitude)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.AdamW])
@given(
    param=tensors((3,), max_magnitude=1e3),
    hyper=decay_hyperparameters(max_decay_per_step=0.5),
    steps=st.integers(1, 50),
)
@example(param=torch.tensor([14.0, -1.0, 0.5]), hyper=ARTICLE, steps=400)
def test_decay_alone_is_geometric(
    optimizer_class: Callable[..., torch.optim.Optimizer],
    dtype: torch.dtype,
    device: str,
    param: Tensor,
    hyper: DecayHyperparameters,
    steps: int,
) -> None:
    # With a zero gradient Adam's moments stay zero, so AdamW, like SGD, only decays.
    run = _on(ParamAndGrads(param, (torch.zeros_like(param),) * steps), dtype, device)
    final = _torch_trajectory(optimizer_class, run, lr=hyper.lr, weight_decay=hyper.weight_decay)[
        -1
    ]
    expected = decay_factor(hyper.lr, hyper.weight_decay) ** steps * run.param.to(F64)
    # Each step rounds the weight (≤ |w|) and the decay term (≤ ηλ|w|) once or twice.
    magnitude = steps * (1 + hyper.decay_per_step) * run.param.abs().to(F64)
    assert_close_to_terms(final, expected, magnitude=magnitude)


# --- L2 in the loss versus weight_decay --------------------------------------------------------


@st.composite
def regression_problems(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor]:
    """(X, y, w₀) for the loss ½·mean((Xw − y)²), small enough that SGD stays stable."""
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    features = draw(tensors((n, d), max_magnitude=1.0))
    targets = draw(tensors((n,), max_magnitude=10.0))
    weights = draw(tensors((d,), max_magnitude=10.0))
    return features, targets, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@given(
    problem=regression_problems(),
    hyper=decay_hyperparameters(max_lr=0.1),
    momentum=st.floats(0.01, 0.95),
    steps=st.integers(1, 6),
)
def test_l2_in_the_loss_equals_weight_decay_under_momentum(
    dtype: torch.dtype,
    device: str,
    nesterov: bool,
    problem: tuple[Tensor, Tensor, Tensor],
    hyper: DecayHyperparameters,
    momentum: float,
    steps: int,
) -> None:
    features, targets, init = (t.to(device=device, dtype=dtype) for t in problem)

    def fit(penalty_in_loss: bool) -> tuple[list[Tensor], Tensor]:
        w = torch.nn.Parameter(init.clone())
        optimizer = torch.optim.SGD(
            [w],
            lr=hyper.lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=0.0 if penalty_in_loss else hyper.weight_decay,
        )
        trajectory, magnitude = [], torch.zeros_like(init, dtype=F64)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = 0.5 * ((features @ w - targets) ** 2).mean()
            if penalty_in_loss:
                loss = loss + l2_penalty(w, hyper.weight_decay)
            loss.backward()
            before = w.detach().clone()
            optimizer.step()
            magnitude = magnitude + (
                before.abs() + w.detach().abs() + hyper.lr * w.grad.abs() * (2 + 2 * momentum)
            ).to(F64)
            trajectory.append(w.detach().clone())
        return trajectory, magnitude

    in_optimizer, _ = fit(penalty_in_loss=False)
    in_loss, magnitude = fit(penalty_in_loss=True)
    # Later gradients depend on earlier weights, so a rounding difference is carried along;
    # with η·‖XᵀX/n + λ‖ below 1 it is not amplified.
    for step, (a, b) in enumerate(zip(in_optimizer, in_loss, strict=True)):
        assert_close_to_terms(a, b, magnitude=magnitude, ulps=16 * steps, msg=f"step {step + 1}")


# --- Adam and AdamW ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("optimizer_class", "manual_step"),
    [(torch.optim.AdamW, adamw_step), (torch.optim.Adam, adam_step)],
    ids=["AdamW", "Adam"],
)
@given(run=RUNS, hyper=decay_hyperparameters(), options=adam_options())
def test_adam_family_matches_the_manual_formula(
    optimizer_class: Callable[..., torch.optim.Optimizer],
    manual_step: Callable[..., tuple[Tensor, AdamState]],
    dtype: torch.dtype,
    device: str,
    run: ParamAndGrads,
    hyper: DecayHyperparameters,
    options: dict[str, Any],
) -> None:
    run = _on(run, dtype, device)
    kwargs = {"lr": hyper.lr, "weight_decay": hyper.weight_decay, **options}
    expected, magnitudes = _manual_adam(manual_step, run, **kwargs)
    actual = _torch_trajectory(optimizer_class, run, **kwargs)
    _assert_trajectories_close(actual, expected, magnitudes, ulps=16)


def test_adamw_is_not_adam_with_l2() -> None:
    # A large and a small weight with the same small gradient, 10 steps, η = 0.01, λ = 0.1.
    # Adam+L2 divides λw by √v̂, which λw itself dominates: every weight moves by about η per
    # step, 0.1 in total, whatever its size. AdamW removes the fraction ηλ of each weight per
    # step on top of Adam's ≈ η: the large weight loses ≈ 100·(1 − 0.999¹⁰) + 0.1 ≈ 1.1.
    run = ParamAndGrads(
        param=torch.tensor([100.0, 0.1], dtype=F64),
        grads=(torch.tensor([1e-3, 1e-3], dtype=F64),) * 10,
    )
    kwargs = {"lr": 0.01, "weight_decay": 0.1}
    moved_l2 = run.param - _torch_trajectory(torch.optim.Adam, run, **kwargs)[-1]
    moved_w = run.param - _torch_trajectory(torch.optim.AdamW, run, **kwargs)[-1]
    assert moved_l2.min() > 0.09 and moved_l2.max() < 0.1001
    assert 1.09 < moved_w[0] < 1.1
    # Each optimizer follows its own formula, so the difference is the coupling, not a bug.
    for manual_step, moved in ((adam_step, moved_l2), (adamw_step, moved_w)):
        expected, _ = _manual_adam(manual_step, run, betas=(0.9, 0.999), eps=1e-8, **kwargs)
        torch.testing.assert_close(moved, run.param - expected[-1])


# --- loss scaling -------------------------------------------------------------------------------

POWERS_OF_TWO = st.sampled_from([2.0**k for k in range(-4, 5) if k != 0])


def _scaling_is_exact(values: Sequence[Tensor], dtype: torch.dtype, scale: float) -> bool:
    """True if every nonzero value, and the value times ``scale``, is a normal ``dtype`` number.

    Multiplying by a power of two is exact only there: below the smallest normal number the
    spacing of representable values is fixed, so a scaled subnormal is rounded differently.
    """
    info = torch.finfo(dtype)
    # A factor 4 of margin for the float64 reference standing in for the run's own values.
    floor = 4 * info.tiny / min(scale, 1.0)
    ceiling = info.max / (4 * max(scale, 1.0))
    for value in values:
        magnitude = value.abs()
        nonzero = magnitude[magnitude != 0]
        if bool(((nonzero < floor) | (nonzero > ceiling)).any()):
            return False
    return True


def _sgd_intermediates(
    run: ParamAndGrads, *, lr: float, weight_decay: float, **options: Any
) -> list[Tensor]:
    """Every product and sum SGD forms before the lr step, from the float64 reference."""
    momentum, dampening = options["momentum"], options["dampening"]
    param, state, values = run.param.to(F64), None, [torch.tensor(weight_decay, dtype=F64)]
    for grad in run.grads:
        grad = grad.to(F64)
        direction = grad + weight_decay * param
        values += [grad, weight_decay * param, direction, (1 - dampening) * direction]
        param, state = sgd_step(param, grad, state, lr=lr, weight_decay=weight_decay, **options)
        if state.momentum_buffer is not None:
            values += [state.momentum_buffer, momentum * state.momentum_buffer]
    return values


def _adam_intermediates(
    run: ParamAndGrads, *, coupled: bool, lr: float, weight_decay: float, betas: Any, eps: float
) -> list[Tensor]:
    """The moments and their ingredients, from the float64 reference."""
    step = adam_step if coupled else adamw_step
    param, state, values = run.param.to(F64), None, [torch.tensor(eps, dtype=F64)]
    for grad in run.grads:
        grad = grad.to(F64)
        direction = grad + weight_decay * param if coupled else grad
        values += [direction, (1 - betas[0]) * direction, (1 - betas[1]) * direction**2]
        param, state = step(
            param, grad, state, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps
        )
        values += [state.exp_avg, state.exp_avg_sq, betas[1] * state.exp_avg_sq]
    return values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(run=RUNS, hyper=decay_hyperparameters(), options=sgd_options(), scale=POWERS_OF_TWO)
def test_sgd_loss_scale_trades_lr_for_weight_decay_exactly(
    dtype: torch.dtype,
    device: str,
    run: ParamAndGrads,
    hyper: DecayHyperparameters,
    options: dict[str, Any],
    scale: float,
) -> None:
    """Loss·c with (η/c, λ·c) walks the same weights as loss with (η, λ).

    The direction becomes c·g + cλ·w = c·(g + λw), the momentum buffer is c times larger, and
    the step η/c · c·(…) is unchanged. With c a power of two every product is exact (outside
    the subnormal range), so the trajectories are bitwise equal.
    """
    intermediates = _sgd_intermediates(run, lr=hyper.lr, weight_decay=hyper.weight_decay, **options)
    assume(_scaling_is_exact(intermediates, dtype, scale))
    run = _on(run, dtype, device)
    reference = _torch_trajectory(
        torch.optim.SGD, run, lr=hyper.lr, weight_decay=hyper.weight_decay, **options
    )
    scaled = _torch_trajectory(
        torch.optim.SGD,
        run,
        grad_scale=scale,
        lr=hyper.lr / scale,
        weight_decay=hyper.weight_decay * scale,
        **options,
    )
    for step, (a, b) in enumerate(zip(reference, scaled, strict=True)):
        assert torch.equal(a, b), f"step {step + 1}: {a} != {b}"


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    run=RUNS,
    hyper=decay_hyperparameters(),
    options=sgd_options(),
    scale=st.floats(0.01, 100.0),
)
def test_sgd_loss_scale_trade_holds_for_any_scale_up_to_rounding(
    dtype: torch.dtype,
    run: ParamAndGrads,
    hyper: DecayHyperparameters,
    options: dict[str, Any],
    scale: float,
) -> None:
    run = _on(run, dtype, "cpu")
    kwargs = {"lr": hyper.lr, "weight_decay": hyper.weight_decay, **options}
    reference, magnitudes = _manual_sgd(run, **kwargs)
    scaled = _torch_trajectory(
        torch.optim.SGD,
        run,
        grad_scale=scale,
        lr=hyper.lr / scale,
        weight_decay=hyper.weight_decay * scale,
        **options,
    )
    # Scaling rounds the gradient, λ and η once more each: a few extra eps per term.
    _assert_trajectories_close(scaled, reference, magnitudes, ulps=16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("optimizer_class", "scales_weight_decay"),
    [(torch.optim.Adam, True), (torch.optim.AdamW, False)],
    ids=["Adam", "AdamW"],
)
@given(run=RUNS, hyper=decay_hyperparameters(), options=adam_options(), scale=POWERS_OF_TWO)
def test_adam_ignores_loss_scale_once_eps_scales_too(
    optimizer_class: Callable[..., torch.optim.Optimizer],
    scales_weight_decay: bool,
    device: str,
    run: ParamAndGrads,
    hyper: DecayHyperparameters,
    options: dict[str, Any],
    scale: float,
) -> None:
    """Adam's step m̂/(√v̂ + ε) does not change when g and ε are both multiplied by c.

    Coupled decay sits inside g, so Adam needs λ·c; AdamW's decay is outside, so λ stays.
    The learning rate is unchanged in both cases, unlike SGD. With c a power of two, and no
    moment in the subnormal range, the trajectories are bitwise equal.
    """
    intermediates = _adam_intermediates(
        run,
        coupled=scales_weight_decay,
        lr=hyper.lr,
        weight_decay=hyper.weight_decay,
        **options,
    )
    # √v is only exact when c² scales v exactly.
    assume(_scaling_is_exact(intermediates, torch.float32, scale**2))
    run = _on(run, torch.float32, device)
    kwargs = {"lr": hyper.lr, "betas": options["betas"]}
    reference = _torch_trajectory(
        optimizer_class, run, weight_decay=hyper.weight_decay, eps=options["eps"], **kwargs
    )
    scaled = _torch_trajectory(
        optimizer_class,
        run,
        grad_scale=scale,
        weight_decay=hyper.weight_decay * (scale if scales_weight_decay else 1.0),
        eps=options["eps"] * scale,
        **kwargs,
    )
    for step, (a, b) in enumerate(zip(reference, scaled, strict=True)):
        assert torch.equal(a, b), f"step {step + 1}: {a} != {b}"


# --- implementations agree ----------------------------------------------------------------------

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}


def _fused_support(optimizer_class: type[torch.optim.Optimizer], device: str) -> str | None:
    """None if ``fused=True`` works for this optimizer and device, else the reason it does not."""
    param = torch.nn.Parameter(torch.zeros(2, device=device))
    param.grad = torch.ones_like(param)
    try:
        optimizer_class([param], lr=0.1, fused=True).step()
    except (RuntimeError, ValueError, TypeError) as error:
        return f"fused {optimizer_class.__name__} is not supported on {device}: {error}"
    return None


@st.composite
def parameter_sets(draw: st.DrawFn, *, steps: int = 3) -> list[ParamAndGrads]:
    """Two to four parameters of different shapes: the multi-tensor paths group them."""
    runs = params_and_grads(steps=steps, dtype=torch.float32)
    return draw(st.lists(runs, min_size=2, max_size=4))


def _multi_param_run(
    optimizer_class: type[torch.optim.Optimizer],
    runs: Sequence[ParamAndGrads],
    dtype: torch.dtype,
    device: str,
    **kwargs: Any,
) -> list[Tensor]:
    params = [torch.nn.Parameter(r.param.to(device=device, dtype=dtype)) for r in runs]
    optimizer = optimizer_class(params, **kwargs)
    for step in range(len(runs[0].grads)):
        for param, run in zip(params, runs, strict=True):
            param.grad = run.grads[step].to(device=device, dtype=dtype)
        optimizer.step()
    return [param.detach() for param in params]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("implementation", ["foreach", "fused"])
@given(runs=parameter_sets(), hyper=decay_hyperparameters(), data=st.data())
def test_implementations_agree_with_the_for_loop(
    implementation: str,
    optimizer_class: type[torch.optim.Optimizer],
    dtype: torch.dtype,
    device: str,
    runs: list[ParamAndGrads],
    hyper: DecayHyperparameters,
    data: st.DataObject,
) -> None:
    if implementation == "fused":
        reason = _fused_support(optimizer_class, device)
        if reason is not None:
            pytest.skip(reason)
    options = data.draw(sgd_options() if optimizer_class is torch.optim.SGD else adam_options())
    kwargs = {"lr": hyper.lr, "weight_decay": hyper.weight_decay, **options}
    flag = {"fused": True} if implementation == "fused" else {"foreach": True}
    reference = _multi_param_run(optimizer_class, runs, dtype, device, foreach=False, **kwargs)
    candidate = _multi_param_run(optimizer_class, runs, dtype, device, **flag, **kwargs)
    for index, (run, a, b) in enumerate(zip(runs, candidate, reference, strict=True)):
        if optimizer_class is torch.optim.SGD:
            _, magnitudes = _manual_sgd(_on(run, dtype, device), **kwargs)
        else:
            manual = adam_step if optimizer_class is torch.optim.Adam else adamw_step
            _, magnitudes = _manual_adam(manual, _on(run, dtype, device), **kwargs)
        assert_close_to_terms(a, b, magnitude=magnitudes[-1], ulps=16, msg=f"parameter {index}")


# --- parameters without gradients ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [
        pytest.param(torch.optim.SGD, {"momentum": 0.9, "foreach": False}, id="SGD-for-loop"),
        pytest.param(torch.optim.SGD, {"momentum": 0.9, "foreach": True}, id="SGD-foreach"),
        pytest.param(torch.optim.Adam, {"foreach": False}, id="Adam-for-loop"),
        pytest.param(torch.optim.Adam, {"foreach": True}, id="Adam-foreach"),
        pytest.param(torch.optim.AdamW, {"foreach": False}, id="AdamW-for-loop"),
        pytest.param(torch.optim.AdamW, {"foreach": True}, id="AdamW-foreach"),
        pytest.param(torch.optim.AdamW, {"fused": True}, id="AdamW-fused"),
    ],
)
@given(
    frozen=tensors((3,), max_magnitude=1e3),
    trained=params_and_grads(steps=1, max_steps=4),
    hyper=decay_hyperparameters(allow_zero_decay=False),
    frozen_from_step=st.integers(0, 3),
)
def test_parameters_without_gradients_are_not_decayed(
    optimizer_class: Callable[..., torch.optim.Optimizer],
    kwargs: dict[str, Any],
    device: str,
    frozen: Tensor,
    trained: ParamAndGrads,
    hyper: DecayHyperparameters,
    frozen_from_step: int,
) -> None:
    # Cloned: `.to` returns the very same tensor when nothing changes, and the two must not
    # share storage.
    frozen = frozen.to(device)
    frozen_param = torch.nn.Parameter(frozen.clone())
    zero_grad_param = torch.nn.Parameter(frozen.clone())
    trained_param = torch.nn.Parameter(trained.param.to(device, copy=True))
    optimizer = optimizer_class(
        [trained_param, frozen_param, zero_grad_param],
        lr=hyper.lr,
        weight_decay=hyper.weight_decay,
        **kwargs,
    )
    frozen_value = None
    for step, grad in enumerate(trained.grads):
        trained_param.grad = grad.to(device)
        zero_grad_param.grad = torch.zeros_like(zero_grad_param)
        # The parameter trains for a while (building up state), then stops getting gradients.
        if step < frozen_from_step:
            frozen_param.grad = torch.ones_like(frozen_param)
        else:
            frozen_param.grad = None
            frozen_value = frozen_param.detach().clone() if frozen_value is None else frozen_value
        optimizer.step()
    if frozen_value is not None:
        assert torch.equal(frozen_param.detach(), frozen_value)
    # A zero gradient is still a gradient: that parameter is decayed (unless it is zero).
    nonzero = frozen != 0
    changed = zero_grad_param.detach() != frozen
    assert torch.equal(changed[nonzero], torch.ones_like(changed[nonzero]))
