"""Property-test any optimizer for the weight-decay contract it claims.

The contract is checked against a *twin* run of the same optimizer with ``weight_decay=0``,
which is fed what the decay is supposed to amount to. That makes the check independent of
momentum, adaptive scaling or anything else the optimizer does with the gradient:

* ``"coupled"`` (L2, e.g. SGD, Adam): decay is ``λ·w`` added to the gradient before anything
  else, so ``opt(weight_decay=λ)`` on ``g`` must equal ``opt(weight_decay=0)`` on ``g + λ·w``.
* ``"decoupled"`` (e.g. AdamW): the weights are multiplied by ``1 − lr·λ`` before, and apart
  from, the gradient-driven update, so ``opt(weight_decay=λ)`` on ``g`` must equal
  ``opt(weight_decay=0)`` on ``g`` whose weights were first multiplied by ``1 − lr·λ``.

Plain SGD satisfies both, since ``w − η(g + λw) = (1 − ηλ)w − ηg``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from torch import Tensor

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_positive,
    check_in_range,
    check_int_at_least,
    check_one_of,
)
from wd_lightning.testing.strategies import decay_hyperparameters, tensor_shapes, tensors
from wd_lightning.testing.tolerance import assert_close_to_terms, terms_magnitude

__all__ = ["COUPLINGS", "DEFAULT_MAX_EXAMPLES", "Coupling", "check_weight_decay"]

Coupling = Literal["coupled", "decoupled"]
COUPLINGS: tuple[Coupling, ...] = ("coupled", "decoupled")
#: Enough for every mistake in the test suite's list to be found, in well under a second each.
DEFAULT_MAX_EXAMPLES = 30

_CONTRACTS = {
    "coupled": "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g + λ·w",
    "decoupled": (
        "weight_decay=λ on grad g must give what weight_decay=0 gives on grad g after the "
        "weights were multiplied by (1 − lr·λ)"
    ),
}
# Keys the check sets itself; accepting them from the caller would silently be overridden.
_RESERVED_KWARGS = frozenset({"params", "lr", "weight_decay"})


@dataclass(frozen=True)
class _ParamCase:
    """One parameter: its starting value and its gradient at each step (``None``: no grad)."""

    init: Tensor
    grads: tuple[Tensor | None, ...]


@dataclass(frozen=True)
class _GroupCase:
    lr: float
    weight_decay: float
    params: tuple[_ParamCase, ...]


@dataclass(frozen=True)
class _Scenario:
    """Parameter groups, per-step gradients and the constructor defaults for one example."""

    default_lr: float
    default_weight_decay: float
    groups: tuple[_GroupCase, ...]

    def summary(self) -> str:
        groups = ", ".join(
            f"group {i}: lr={g.lr!r}, weight_decay={g.weight_decay!r}, {len(g.params)} params"
            for i, g in enumerate(self.groups)
        )
        return (
            f"constructor lr={self.default_lr!r}, weight_decay={self.default_weight_decay!r}; "
            f"{groups}"
        )


def check_weight_decay(
    factory: Callable[..., torch.optim.Optimizer],
    coupling: Coupling,
    *,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    steps: int = 4,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    max_decay_per_step: float = 0.5,
    ulps: float = 64.0,
    seed: int | None = None,
    hypothesis_settings: settings | None = None,
) -> None:
    """Property-test that ``factory`` applies weight decay as ``coupling`` says.

    Each example builds the optimizer over two or three parameter groups with their own ``lr``
    and ``weight_decay`` (the constructor's defaults differ from all of them), takes ``steps``
    steps, and after every step checks that

    * each parameter with a gradient matches the twin run described in the module docstring,
      within ``ulps · eps · (size of the update's terms)``;
    * each parameter whose ``.grad`` is ``None`` has not changed at all (not even decayed);
      one parameter never gets a gradient and others lose theirs on some steps;
    * no ``.grad`` was modified in place or replaced.

    Hypothesis settings (e.g. ``derandomize``) come from the active profile unless
    ``hypothesis_settings`` is given; ``max_examples``, ``deadline=None`` and ``database=None``
    are always set here, and the slow "explain" phase is left out.

    With ``maximize=True`` in ``optimizer_kwargs`` the gradient is ascended but decay still
    pulls towards zero, so the coupled twin gets ``g − λ·w`` instead.

    Args:
        factory: called like an optimizer class:
            ``factory(param_groups, lr=..., weight_decay=..., **optimizer_kwargs)``.
        coupling: ``"coupled"`` or ``"decoupled"``, the contract the optimizer claims.
        optimizer_kwargs: further constructor arguments, e.g. ``{"momentum": 0.9}``; must not
            contain ``params``, ``lr`` or ``weight_decay``.
        max_examples: number of examples Hypothesis tries, at least 1.
        steps: steps per example, at least 1; use 3 or more to catch decay that is skipped
            on some steps.
        dtype: ``torch.float32`` or ``torch.float64`` for parameters and gradients.
        device: where the parameters live.
        max_decay_per_step: upper bound on each group's ``lr·weight_decay``, in ``(0, 1)``.
        ulps: tolerance in units of ``eps`` per unit of term magnitude; positive.
        seed: fixes Hypothesis's random seed when given.
        hypothesis_settings: settings to start from instead of the active profile, e.g.
            ``settings(phases=[Phase.generate])`` to skip shrinking a failure.

    Raises:
        ValueError: if an argument is invalid (raised before any example is run).
        AssertionError: if the contract is broken; the message says at which step, for which
            group and parameter, and Hypothesis adds the falsifying example.

    Example:
        >>> import torch
        >>> check_weight_decay(torch.optim.SGD, "coupled", optimizer_kwargs={"momentum": 0.9})
        >>> check_weight_decay(torch.optim.AdamW, "decoupled", max_examples=10)
        >>> try:
        ...     check_weight_decay(torch.optim.AdamW, "coupled", max_examples=10)
        ... except AssertionError:
        ...     print("AdamW's decay is not coupled")
        AdamW's decay is not coupled
    """
    kwargs = _validated(
        factory,
        coupling,
        optimizer_kwargs=optimizer_kwargs,
        max_examples=max_examples,
        steps=steps,
        dtype=dtype,
        max_decay_per_step=max_decay_per_step,
        ulps=ulps,
        seed=seed,
        hypothesis_settings=hypothesis_settings,
    )
    device = torch.device(device)
    parent = settings() if hypothesis_settings is None else hypothesis_settings
    scenarios = _scenarios(
        steps=steps, dtype=dtype, device=device, max_decay_per_step=max_decay_per_step
    )

    @settings(
        parent,
        max_examples=max_examples,
        deadline=None,
        database=None,
        # One clear failure is more useful here than a group of related ones.
        report_multiple_bugs=False,
        # The explain phase re-runs many variants of a failure; the message already says where.
        phases=[phase for phase in parent.phases if phase is not Phase.explain],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenario=scenarios)
    def weight_decay_contract(scenario: _Scenario) -> None:
        _run_against_twin(scenario, factory, coupling, kwargs, steps=steps, ulps=ulps)

    if seed is not None:
        weight_decay_contract = hypothesis_seed(seed)(weight_decay_contract)
    weight_decay_contract()


def _validated(
    factory: object,
    coupling: object,
    *,
    optimizer_kwargs: Mapping[str, Any] | None,
    max_examples: object,
    steps: object,
    dtype: object,
    max_decay_per_step: float,
    ulps: float,
    seed: object,
    hypothesis_settings: object,
) -> dict[str, Any]:
    """Reject bad arguments up front, so a typo is not reported as a broken optimizer."""
    if not callable(factory):
        raise InvalidArgumentError("factory", factory, "a callable like an optimizer class")
    check_one_of("coupling", coupling, COUPLINGS)
    kwargs = dict(optimizer_kwargs or {})
    clashing = sorted(_RESERVED_KWARGS.intersection(kwargs))
    if clashing:
        raise InvalidArgumentError(
            "optimizer_kwargs", clashing, "no params, lr or weight_decay: the check sets them"
        )
    check_int_at_least("max_examples", max_examples, 1)
    check_int_at_least("steps", steps, 1)
    check_one_of("dtype", dtype, (torch.float32, torch.float64))
    check_in_range("max_decay_per_step", max_decay_per_step, 0.0, 1.0, closed="neither")
    check_finite_positive("ulps", ulps)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgumentError("seed", seed, "an integer or None")
    if hypothesis_settings is not None and not isinstance(hypothesis_settings, settings):
        raise InvalidArgumentError(
            "hypothesis_settings", hypothesis_settings, "a hypothesis.settings object or None"
        )
    return kwargs


def _scenarios(
    *, steps: int, dtype: torch.dtype, device: torch.device, max_decay_per_step: float
) -> st.SearchStrategy[_Scenario]:
    # Magnitudes of order 10 keep every term comparable, so a missing or extra decay term is
    # far above rounding, while the decay product up to `max_decay_per_step` makes it visible.
    shapes = tensor_shapes(max_dims=2, max_side=2)
    # One strategy object per shape: Hypothesis validates each new strategy on first use, and
    # building them afresh inside every draw would dominate the run time.
    values_by_shape: dict[tuple[int, ...], st.SearchStrategy[Tensor]] = {}

    def values(shape: tuple[int, ...]) -> st.SearchStrategy[Tensor]:
        if shape not in values_by_shape:
            values_by_shape[shape] = tensors(shape, dtype=dtype, device=device, max_magnitude=10.0)
        return values_by_shape[shape]

    presence = st.lists(st.booleans(), min_size=steps, max_size=steps).map(_mostly_true)

    @st.composite
    def param_case(draw: st.DrawFn, *, ever_has_grad: bool) -> _ParamCase:
        shape = draw(shapes)
        init = draw(values(shape))
        if not ever_has_grad:
            return _ParamCase(init=init, grads=(None,) * steps)
        # Mostly present, sometimes missing: a parameter may skip a step after having state.
        present = draw(presence)
        grads = tuple(draw(values(shape)) if has else None for has in present)
        return _ParamCase(init=init, grads=grads)

    hypers = {
        first: decay_hyperparameters(
            min_lr=1e-3, max_decay_per_step=max_decay_per_step, allow_zero_decay=not first
        )
        for first in (True, False)
    }
    params_with_grads = st.lists(param_case(ever_has_grad=True), min_size=1, max_size=2)
    param_without_grads = param_case(ever_has_grad=False)

    @st.composite
    def group_case(draw: st.DrawFn, *, first: bool) -> _GroupCase:
        # The first group always decays and holds the parameter that never has a gradient,
        # so every example can expose a missing, extra or misplaced decay.
        hyper = draw(hypers[first])
        params = draw(params_with_grads)
        if first:
            params.append(draw(param_without_grads))
        return _GroupCase(lr=hyper.lr, weight_decay=hyper.weight_decay, params=tuple(params))

    first_group = group_case(first=True)
    other_groups = st.lists(group_case(first=False), min_size=1, max_size=2)
    default_weight_decays = st.floats(0.0, 1.0)

    @st.composite
    def scenario(draw: st.DrawFn) -> _Scenario:
        first = draw(first_group)
        rest = draw(other_groups)
        groups = (first, *rest)
        # The constructor's lr differs from every group's, so using it by mistake shows.
        group_lrs = {group.lr for group in groups}
        default_lr = draw(st.floats(1e-3, 1.0).filter(lambda lr: lr not in group_lrs))
        default_weight_decay = draw(default_weight_decays)
        return _Scenario(default_lr, default_weight_decay, groups)

    return scenario()


def _mostly_true(flags: list[bool]) -> tuple[bool, ...]:
    # Hypothesis shrinks booleans towards False; inverting keeps "has a gradient" the simple case.
    return tuple(not flag for flag in flags)


def _run_against_twin(
    scenario: _Scenario,
    factory: Callable[..., torch.optim.Optimizer],
    coupling: Coupling,
    kwargs: Mapping[str, Any],
    *,
    steps: int,
    ulps: float,
) -> None:
    params = [[torch.nn.Parameter(p.init.clone()) for p in g.params] for g in scenario.groups]
    twins = [[torch.nn.Parameter(p.init.clone()) for p in g.params] for g in scenario.groups]
    optimizer = factory(
        [
            {"params": group_params, "lr": g.lr, "weight_decay": g.weight_decay}
            for group_params, g in zip(params, scenario.groups, strict=True)
        ],
        lr=scenario.default_lr,
        weight_decay=scenario.default_weight_decay,
        **kwargs,
    )
    twin_optimizer = factory(
        [
            {"params": group_twins, "lr": g.lr, "weight_decay": 0.0}
            for group_twins, g in zip(twins, scenario.groups, strict=True)
        ],
        lr=scenario.default_lr,
        weight_decay=0.0,
        **kwargs,
    )
    maximize = bool(kwargs.get("maximize", False))
    magnitudes = [[torch.zeros((), dtype=torch.float64) for _ in g.params] for g in scenario.groups]

    for step in range(steps):
        # Per parameter: (the tensor handed to the optimizer as .grad, a private copy) or None.
        given_grads: list[list[tuple[Tensor, Tensor] | None]] = []
        befores: list[list[Tensor]] = []
        for g, group_params, group_twins in zip(scenario.groups, params, twins, strict=True):
            given_grads.append([])
            befores.append([])
            for case, param, twin in zip(g.params, group_params, group_twins, strict=True):
                befores[-1].append(param.detach().clone())
                grad = case.grads[step]
                if grad is None:
                    param.grad, twin.grad = None, None
                    given_grads[-1].append(None)
                    continue
                param.grad = grad.clone()
                given_grads[-1].append((param.grad, grad))
                twin.grad = _twin_gradient(
                    twin, grad, coupling, lr=g.lr, weight_decay=g.weight_decay, maximize=maximize
                )
        twin_befores = [[t.detach().clone() for t in group] for group in twins]

        optimizer.step()
        twin_optimizer.step()

        for gi, g in enumerate(scenario.groups):
            for pi, case in enumerate(g.params):
                where = (
                    f"weight-decay contract ({coupling}) broken at step {step + 1} of {steps}, "
                    f"group {gi} (lr={g.lr!r}, weight_decay={g.weight_decay!r}), parameter {pi}"
                )
                param, before = params[gi][pi], befores[gi][pi]
                if case.grads[step] is None:
                    _assert_untouched(param, before, where)
                    continue
                _assert_grad_intact(param, given_grads[gi][pi], where)
                twin, twin_before = twins[gi][pi], twin_befores[gi][pi]
                magnitudes[gi][pi] = magnitudes[gi][pi] + terms_magnitude(
                    before,
                    g.lr * case.grads[step].abs(),
                    g.lr * g.weight_decay * before.abs(),
                    twin.detach() - twin_before,
                )
                assert_close_to_terms(
                    param.detach(),
                    twin.detach(),
                    magnitude=magnitudes[gi][pi].to(param.device),
                    ulps=ulps,
                    msg=f"{where}: {_CONTRACTS[coupling]}; {scenario.summary()}",
                )


def _twin_gradient(
    twin: Tensor,
    grad: Tensor,
    coupling: Coupling,
    *,
    lr: float,
    weight_decay: float,
    maximize: bool,
) -> Tensor:
    """The gradient the decay-free twin gets, after decoupled decay is applied to its weights."""
    if coupling == "coupled":
        # Under `maximize` the optimizer moves along g − λw (up the loss, down towards zero);
        # the decay-free twin moves along the gradient it is given, so it must be given g − λw.
        # `add(..., alpha=)` is the operation torch.optim uses, so torch's own optimizers see
        # bit-identical gradients; Adam's normalisation would magnify a one-ulp difference
        # wherever g and λ·w nearly cancel.
        return grad.add(twin.detach(), alpha=-weight_decay if maximize else weight_decay)
    with torch.no_grad():
        # torch's decoupled optimizers scale the weights before the moment update; so do we.
        twin.mul_(1.0 - lr * weight_decay)
    return grad.clone()


def _assert_untouched(param: Tensor, before: Tensor, where: str) -> None:
    if not torch.equal(param.detach(), before):
        change = (param.detach() - before).abs().max().item()
        raise AssertionError(
            f"{where}: the parameter has no gradient (.grad is None) on this step but changed "
            f"by up to {change:.3e}; a parameter without a gradient must not move or decay."
        )


def _assert_grad_intact(param: Tensor, given: tuple[Tensor, Tensor] | None, where: str) -> None:
    if given is None:  # the caller only asks for parameters that were given a gradient
        raise RuntimeError("internal error: no gradient was handed over for this parameter")
    handed_over, original = given
    if param.grad is not handed_over:
        raise AssertionError(f"{where}: step() replaced the parameter's .grad with another tensor.")
    if not torch.equal(handed_over, original):
        change = (handed_over - original).abs().max().item()
        raise AssertionError(
            f"{where}: step() modified .grad in place (by up to {change:.3e}); the gradient "
            "belongs to the caller, e.g. for clipping, logging or gradient accumulation."
        )
