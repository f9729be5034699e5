"""One example of the weight-decay check: the optimizer, a bare run and one twin per contract.

Every run of an example gets its own copy of each gradient (an optimizer that writes into
``.grad`` must not change what another run sees), the same random numbers at each step (for
optimizers that draw noise or round stochastically), and the same learning-rate schedule:

* the *real* run has ``weight_decay=λ``;
* the *bare* run has ``weight_decay=0`` and the raw gradients: it shows whether the
  optimizer has started moving (warm-up optimizers do not, at first) and whether
  ``weight_decay`` changed anything at all;
* one *twin* per contract has ``weight_decay=0`` and is fed what the contract says the decay
  amounts to (see :mod:`wd_lightning.testing.decay_contracts`).

The run goes on past the requested number of steps until the bare run has moved and the
decay has made a difference, so that no check passes because nothing happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from wd_lightning.testing.decay_contracts import DecayContract, DecayStep
from wd_lightning.testing.strategies import tensor_shapes, tensors
from wd_lightning.testing.tolerance import assert_close_to_terms, terms_magnitude

__all__ = ["Mismatch", "Outcome", "RunOptions", "Scenario", "run_scenario", "scenarios"]


@dataclass(frozen=True)
class ParamCase:
    """One parameter: its starting value and its gradient at each step (``None``: no grad)."""

    init: Tensor
    grads: tuple[Tensor | None, ...]


@dataclass(frozen=True)
class GroupCase:
    lr: float
    weight_decay: float
    params: tuple[ParamCase, ...]


@dataclass(frozen=True)
class Scenario:
    """Parameter groups, per-step gradients, the lr schedule and the constructor defaults.

    Steps past ``len(lr_multipliers)`` reuse the gradients and multipliers from the start.
    """

    default_lr: float
    default_weight_decay: float
    groups: tuple[GroupCase, ...]
    lr_multipliers: tuple[float, ...]

    def lr_at(self, group: int, step: int) -> float:
        """The learning rate of ``group`` at ``step`` (0-based)."""
        # Capped at 1 so that lr·λ stays below max_decay_per_step, as λ alone does.
        return min(
            1.0, self.groups[group].lr * self.lr_multipliers[step % len(self.lr_multipliers)]
        )

    def summary(self) -> str:
        groups = ", ".join(
            f"group {i}: lr={g.lr!r}, weight_decay={g.weight_decay!r}, {len(g.params)} params"
            for i, g in enumerate(self.groups)
        )
        return (
            f"constructor lr={self.default_lr!r}, weight_decay={self.default_weight_decay!r}; "
            f"{groups}; lr multiplied by {list(self.lr_multipliers)} at steps 1.."
        )


@dataclass(frozen=True)
class RunOptions:
    """How to build and step the optimizer; the same for every example."""

    factory: Callable[..., torch.optim.Optimizer]
    kwargs: Mapping[str, Any]
    group_options: Mapping[str, Any]
    closure: bool
    steps: int
    warmup_steps: int
    ulps: float

    @property
    def maximize(self) -> bool:
        return bool(self.kwargs.get("maximize", self.group_options.get("maximize", False)))


@dataclass
class Mismatch:
    """Where a contract first failed, with the weights to show."""

    step: int
    group: int
    param: int
    lr: float
    weight_decay: float
    before: Tensor
    expected: Tensor
    actual: Tensor
    bare: Tensor
    detail: str

    def ignores_decay(self) -> bool:
        """Whether the weights are exactly those of the run with ``weight_decay=0``."""
        return torch.equal(self.actual, self.bare)

    def describe(self, *, planned_steps: int, show_tensors: bool = True) -> str:
        of = f"of {planned_steps}" if self.step <= planned_steps else "(after a warm-up)"
        text = (
            f"step {self.step} {of}, group {self.group} (lr={self.lr!r}, "
            f"weight_decay={self.weight_decay!r}), parameter {self.param}: {self.detail}"
        )
        if show_tensors:
            text += (
                f"\n  weights before the step: {_show(self.before)}"
                f"\n  expected after the step: {_show(self.expected)}"
                f"\n  actual after the step:   {_show(self.actual)}"
                f"\n  with weight_decay=0:     {_show(self.bare)}"
            )
        return text


@dataclass
class Outcome:
    """What one example showed; ``mismatches`` maps a contract's name to its first failure."""

    steps_run: int = 0
    mismatches: dict[str, Mismatch] = field(default_factory=dict)
    gradless_moved: str | None = None
    grad_written: str | None = None
    moved_at: int | None = None
    decay_effective_at: int | None = None
    final_real: list[Tensor] = field(default_factory=list)
    final_bare: list[Tensor] = field(default_factory=list)


def _show(tensor: Tensor) -> str:
    if tensor.numel() > 8:
        return f"{tuple(tensor.shape)} tensor, first values {tensor.flatten()[:8].tolist()}"
    return repr(tensor.tolist())


def scenarios(
    *,
    steps: int,
    dtypes: Sequence[torch.dtype],
    device: torch.device,
    max_decay_per_step: float,
    shapes: st.SearchStrategy[tuple[int, ...]] | None,
) -> st.SearchStrategy[Scenario]:
    """Examples of two or three groups with their own lr, λ, dtype and a changing lr."""
    if shapes is None:
        shapes = tensor_shapes(max_dims=2, max_side=2)
        # The first parameter has two elements or more: on a single element, a step scaled to
        # the weights' norm (trust ratios, normalised updates) hides any decay.
        anchor_shapes = st.sampled_from([(2,), (1, 2), (2, 1), (2, 2)])
    else:
        anchor_shapes = shapes
    # One strategy object per (shape, dtype): Hypothesis validates each new strategy on first
    # use, and building them afresh inside every draw would dominate the run time.
    values_by_key: dict[tuple[tuple[int, ...], torch.dtype], st.SearchStrategy[Tensor]] = {}

    def values(shape: tuple[int, ...], dtype: torch.dtype) -> st.SearchStrategy[Tensor]:
        key = (shape, dtype)
        if key not in values_by_key:
            # Magnitudes of order 10 keep every term comparable, so a missing or extra decay
            # term is far above rounding.
            values_by_key[key] = tensors(shape, dtype=dtype, device=device, max_magnitude=10.0)
        return values_by_key[key]

    presence = st.lists(st.booleans(), min_size=steps, max_size=steps).map(_mostly_true)
    dtype_choice = st.sampled_from(list(dtypes))

    @st.composite
    def param_case(
        draw: st.DrawFn, dtype: torch.dtype, *, ever_has_grad: bool, anchor: bool = False
    ) -> ParamCase:
        shape = draw(anchor_shapes if anchor else shapes)
        init = draw(values(shape, dtype))
        if not ever_has_grad:
            return ParamCase(init=init, grads=(None,) * steps)
        if anchor:
            # The first parameter always has weights of at least 1/2 and non-zero gradients, so
            # that every example gives the optimizer something to move and the decay something
            # to shrink: all-zero examples (where Hypothesis shrinks to) would prove nothing.
            grads = tuple(_nonzero(draw(values(shape, dtype))) for _ in range(steps))
            return ParamCase(init=_substantial(init), grads=grads)
        # Mostly present, sometimes missing: a parameter may skip a step after having state.
        present = draw(presence)
        grads = tuple(draw(values(shape, dtype)) if has else None for has in present)
        return ParamCase(init=init, grads=grads)

    # λ is drawn below max_decay_per_step and lr at most 1, so every factor a named contract
    # applies (1 − ηλ, 1 − λ, 1 − λη/η₀, ...) stays positive.
    lrs = st.floats(1e-3, 1.0, allow_subnormal=False)
    first_decays = st.floats(min(1e-3, max_decay_per_step), max_decay_per_step)
    other_decays = st.one_of(st.just(0.0), st.floats(0.0, max_decay_per_step))

    @st.composite
    def group_case(draw: st.DrawFn, *, first: bool, unlike: torch.dtype | None = None) -> GroupCase:
        # The first group always decays and holds the parameter that never has a gradient,
        # so every example can expose a missing, extra or misplaced decay. A group drawn
        # ``unlike`` a dtype takes another one, and decays too.
        if unlike is None:
            dtype = draw(dtype_choice)
        else:
            dtype = draw(st.sampled_from([d for d in dtypes if d != unlike]))
        lr = draw(lrs)
        weight_decay = draw(first_decays if first or unlike is not None else other_decays)
        params = draw(st.lists(param_case(dtype, ever_has_grad=True), min_size=1, max_size=2))
        if first:
            params[0] = draw(param_case(dtype, ever_has_grad=True, anchor=True))
            params.append(draw(param_case(dtype, ever_has_grad=False)))
        return GroupCase(lr=lr, weight_decay=weight_decay, params=tuple(params))

    # The schedule starts at the group's lr and then changes it, as a scheduler would: a decay
    # computed from the first lr, or not multiplied by the lr at all, then shows.
    # It also rises above the first lr, so that the largest lr so far is not always the first.
    later_multipliers = st.lists(
        st.one_of(st.just(1.0), st.floats(0.25, 1.5)), min_size=steps - 1, max_size=steps - 1
    )

    @st.composite
    def scenario(draw: st.DrawFn) -> Scenario:
        first = draw(group_case(first=True))
        others = draw(st.lists(group_case(first=False), max_size=2, min_size=1))
        if len(set(dtypes)) > 1:
            # With several dtypes asked for, every example mixes them, with decay on both
            # sides: a decay applied to one dtype's bucket only cannot hide.
            others[0] = draw(group_case(first=False, unlike=first.params[0].init.dtype))
        groups = (first, *others)
        # The constructor's lr differs from every group's, so using it by mistake shows.
        group_lrs = {group.lr for group in groups}
        default_lr = draw(st.floats(1e-3, 1.0).filter(lambda lr: lr not in group_lrs))
        default_weight_decay = draw(st.floats(0.0, 1.0))
        multipliers = (1.0, *draw(later_multipliers))
        return Scenario(default_lr, default_weight_decay, groups, multipliers)

    return scenario()


def _nonzero(tensor: Tensor) -> Tensor:
    return torch.where(tensor == 0, torch.ones_like(tensor), tensor)


def _substantial(tensor: Tensor) -> Tensor:
    # Weights of at least 1/2 in size: λ·w of 1e-32 beside a gradient of 1 is lost in
    # rounding, so a decay that is there could not show.
    return torch.where(tensor.abs() < 0.5, torch.where(tensor < 0, -1.0, 1.0).to(tensor), tensor)


def _mostly_true(flags: list[bool]) -> tuple[bool, ...]:
    # Hypothesis shrinks booleans towards False; inverting keeps "has a gradient" the simple case.
    return tuple(not flag for flag in flags)


class _Run:
    """One optimizer over its own copy of the parameters."""

    def __init__(
        self,
        scenario: Scenario,
        options: RunOptions,
        weight_decays: Sequence[float],
        default: float,
    ) -> None:
        self.params = [
            [torch.nn.Parameter(p.init.clone()) for p in g.params] for g in scenario.groups
        ]
        self.optimizer = options.factory(
            [
                {"params": params, "lr": g.lr, "weight_decay": wd, **options.group_options}
                for params, g, wd in zip(self.params, scenario.groups, weight_decays, strict=True)
            ],
            lr=scenario.default_lr,
            weight_decay=default,
            **options.kwargs,
        )
        for group in self.optimizer.param_groups:
            # What torch's schedulers record before changing the lr.
            group.setdefault("initial_lr", group["lr"])
        self.closure = options.closure
        self.handed: dict[int, Tensor] = {}
        self.grads: list[list[Tensor | None]] = []

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def hand_over(self, grads: list[list[Tensor | None]]) -> None:
        """Give each parameter a private copy of its gradient (or none)."""
        self.grads = grads
        for group_params, group_grads in zip(self.params, grads, strict=True):
            for param, grad in zip(group_params, group_grads, strict=True):
                param.grad = None if grad is None else grad.clone()
                if grad is not None:
                    self.handed[id(param)] = param.grad

    def step(self) -> None:
        if not self.closure:
            self.optimizer.step()
            return

        def closure() -> Tensor:
            # A linear loss Σ g·w, whose gradient is g wherever the optimizer evaluates it.
            self.hand_over(self.grads)
            loss = torch.zeros((), dtype=torch.float64)
            with torch.no_grad():
                for group_params, group_grads in zip(self.params, self.grads, strict=True):
                    for param, grad in zip(group_params, group_grads, strict=True):
                        if grad is not None:
                            loss = loss + (grad * param).sum().to("cpu", torch.float64)
            return loss.float()

        self.optimizer.step(closure)


class _RandomNumbers:
    """The same random numbers for every run of a step: captured once, restored per run."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def capture(self) -> tuple[Tensor, Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state() if self.cuda else None

    def restore(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1])


def run_scenario(
    scenario: Scenario,
    options: RunOptions,
    contracts: Sequence[DecayContract],
    *,
    stop_at_first_mismatch: bool,
    decay_scale: float = 1.0,
) -> Outcome:
    """Run the example for the real, bare and twin runs and report what held.

    Args:
        scenario: the example.
        options: how to build and step the optimizer.
        contracts: the contracts to compare against, one twin each.
        stop_at_first_mismatch: stop once every contract has failed.
        decay_scale: multiplies every λ of the real run (for probing tiny decay).
    """
    device = scenario.groups[0].params[0].init.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # The same random numbers whatever the caller drew before: a verdict on a stochastic
        # optimizer must not depend on which tests ran first.
        torch.manual_seed(0)
        return _run(scenario, options, contracts, stop_at_first_mismatch, decay_scale, device)


def _run(
    scenario: Scenario,
    options: RunOptions,
    contracts: Sequence[DecayContract],
    stop_at_first_mismatch: bool,
    decay_scale: float,
    device: torch.device,
) -> Outcome:
    groups = scenario.groups
    real = _Run(
        scenario,
        options,
        [g.weight_decay * decay_scale for g in groups],
        scenario.default_weight_decay * decay_scale,
    )
    bare = _Run(scenario, options, [0.0] * len(groups), 0.0)
    twins = {c.name: _Run(scenario, options, [0.0] * len(groups), 0.0) for c in contracts}
    live = {c.name: c for c in contracts}
    magnitudes = {
        name: [[torch.zeros((), dtype=torch.float64) for _ in g.params] for g in groups]
        for name in live
    }
    inits = [[p.init for p in g.params] for g in groups]
    max_lrs = [0.0] * len(groups)
    random_numbers = _RandomNumbers(device)
    outcome = Outcome()
    drawn = len(scenario.lr_multipliers)
    last = options.steps + options.warmup_steps

    for step in range(last):
        lrs = [scenario.lr_at(gi, step) for gi in range(len(groups))]
        max_lrs = [max(m, lr) for m, lr in zip(max_lrs, lrs, strict=True)]
        grads = [[p.grads[step % drawn] for p in g.params] for g in groups]
        real_before = [[p.detach().clone() for p in ps] for ps in real.params]
        bare_before = [[p.detach().clone() for p in ps] for ps in bare.params]
        for run in (real, bare, *twins.values()):
            run.set_lrs(lrs)
        real.hand_over(grads)
        bare.hand_over(grads)
        steps_info: dict[str, list[list[tuple[DecayStep, Tensor] | None]]] = {}
        for name, contract in live.items():
            steps_info[name] = _feed_twin(
                twins[name], contract, grads, lrs, max_lrs, scenario, step, options.maximize
            )

        state = random_numbers.capture()
        real.step()
        after_real = random_numbers.capture()
        for run in (bare, *(twins[name] for name in live)):
            random_numbers.restore(state)
            run.step()
        random_numbers.restore(after_real)
        outcome.steps_run = step + 1

        for gi, g in enumerate(groups):
            for pi in range(len(g.params)):
                param, before = real.params[gi][pi], real_before[gi][pi]
                bare_param = bare.params[gi][pi]
                if grads[gi][pi] is None:
                    if not torch.equal(param.detach(), before):
                        change = (param.detach() - before).abs().max().item()
                        outcome.gradless_moved = (
                            f"step {step + 1}, group {gi}, parameter {pi}: the parameter has no "
                            f"gradient (.grad is None) on this step but changed by up to "
                            f"{change:.3e}; a parameter without a gradient must not move or decay."
                        )
                        return _finish(outcome, real, bare)
                    continue
                if outcome.grad_written is None:
                    outcome.grad_written = _grad_write(real, param, grads[gi][pi], step, gi, pi)
                if outcome.moved_at is None and not torch.equal(
                    bare_param.detach(), bare_before[gi][pi]
                ):
                    outcome.moved_at = step + 1
                if (
                    outcome.decay_effective_at is None
                    and g.weight_decay > 0
                    and not torch.equal(param.detach(), bare_param.detach())
                ):
                    outcome.decay_effective_at = step + 1

        for name in list(live):
            mismatch = _compare(
                live[name],
                twins[name],
                steps_info[name],
                real,
                bare,
                magnitudes[name],
                inits,
                step,
                options.ulps,
            )
            if mismatch is not None:
                outcome.mismatches[name] = mismatch
                del live[name]

        if stop_at_first_mismatch and contracts and not live:
            break
        done = step + 1 >= options.steps
        if done and outcome.moved_at is not None and outcome.decay_effective_at is not None:
            break
    return _finish(outcome, real, bare)


def _finish(outcome: Outcome, real: _Run, bare: _Run) -> Outcome:
    outcome.final_real = [p.detach().clone() for ps in real.params for p in ps]
    outcome.final_bare = [p.detach().clone() for ps in bare.params for p in ps]
    return outcome


def _feed_twin(
    twin: _Run,
    contract: DecayContract,
    grads: list[list[Tensor | None]],
    lrs: list[float],
    max_lrs: list[float],
    scenario: Scenario,
    step: int,
    maximize: bool,
) -> list[list[tuple[DecayStep, Tensor] | None]]:
    """Set the twin's weights and gradients as the contract says; return what it was told."""
    told: list[list[tuple[DecayStep, Tensor] | None]] = []
    twin_grads: list[list[Tensor | None]] = []
    for gi, g in enumerate(scenario.groups):
        told.append([])
        twin_grads.append([])
        for pi, twin_param in enumerate(twin.params[gi]):
            grad = grads[gi][pi]
            if grad is None:
                told[-1].append(None)
                twin_grads[-1].append(None)
                continue
            info = DecayStep(
                weights=twin_param.detach().clone(),
                grad=grad,
                lr=lrs[gi],
                weight_decay=g.weight_decay,
                initial_lr=scenario.lr_at(gi, 0),
                max_lr=max_lrs[gi],
                step=step + 1,
                maximize=maximize,
            )
            weights, twin_grad = contract.twin_input(info)
            with torch.no_grad():
                twin_param.copy_(weights)
            told[-1].append((info, twin_param.detach().clone()))
            twin_grads[-1].append(twin_grad)
    twin.hand_over(twin_grads)
    return told


def _compare(
    contract: DecayContract,
    twin: _Run,
    told: list[list[tuple[DecayStep, Tensor] | None]],
    real: _Run,
    bare: _Run,
    magnitudes: list[list[Tensor]],
    inits: list[list[Tensor]],
    step: int,
    ulps: float,
) -> Mismatch | None:
    """Compare the real run with the contract's expectation; move the twin onto it."""
    for gi, group_told in enumerate(told):
        for pi, entry in enumerate(group_told):
            if entry is None:
                continue
            info, fed = entry
            twin_param = twin.params[gi][pi]
            actual = real.params[gi][pi].detach()
            twin_result = twin_param.detach().clone()
            expected = contract.expected_given(info, twin_result, actual).to(actual.dtype)
            with torch.no_grad():
                twin_param.copy_(expected)
            twin_grad = twin.grads[gi][pi]
            magnitudes[gi][pi] = (
                magnitudes[gi][pi]
                + terms_magnitude(
                    info.weights,
                    info.lr * (twin_grad.abs() if twin_grad is not None else info.grad.abs()),
                    fed - info.weights,
                    twin_result - fed,
                    expected - twin_result,
                ).cpu()
            )
            try:
                assert_close_to_terms(
                    actual, expected, magnitude=magnitudes[gi][pi].to(actual.device), ulps=ulps
                )
            except AssertionError as error:
                return Mismatch(
                    step=step + 1,
                    group=gi,
                    param=pi,
                    lr=info.lr,
                    weight_decay=info.weight_decay,
                    before=info.weights,
                    expected=expected.clone(),
                    actual=actual.clone(),
                    bare=bare.params[gi][pi].detach().clone(),
                    detail=str(error),
                )
    return None


def _grad_write(
    run: _Run, param: Tensor, original: Tensor, step: int, gi: int, pi: int
) -> str | None:
    where = f"step {step + 1}, group {gi}, parameter {pi}"
    handed = run.handed.get(id(param))
    if param.grad is not handed:
        return f"{where}: step() replaced the parameter's .grad with another tensor"
    if handed is not None and not torch.equal(handed, original):
        change = (handed - original).abs().max().item()
        return f"{where}: step() modified .grad in place (by up to {change:.3e})"
    return None
