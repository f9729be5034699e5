"""Property-test any optimizer for the weight-decay contract it claims.

The contract is checked against a *twin* run of the same optimizer with ``weight_decay=0``,
which is fed what the decay is supposed to amount to (see
:mod:`wd_lightning.testing.decay_contracts` for every named rule). The two historical ones:

* ``"coupled"`` (L2, e.g. SGD, Adam): decay is ``λ·w`` added to the gradient before anything
  else, so ``opt(weight_decay=λ)`` on ``g`` must equal ``opt(weight_decay=0)`` on ``g + λ·w``.
* ``"decoupled"`` (e.g. AdamW): the weights are multiplied by ``1 − lr·λ`` before, and apart
  from, the gradient-driven update, so ``opt(weight_decay=λ)`` on ``g`` must equal
  ``opt(weight_decay=0)`` on ``g`` whose weights were first multiplied by ``1 − lr·λ``.

Plain SGD satisfies both, since ``w − η(g + λw) = (1 − ηλ)w − ηg``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite_positive,
    check_in_range,
    check_int_at_least,
    check_one_of,
)
from wd_lightning.testing.decay_contracts import (
    CONTRACTS,
    DecayContract,
    contract_named,
    held,
    variants,
)
from wd_lightning.testing.twin_runs import Outcome, RunOptions, Scenario, run_scenario, scenarios

__all__ = [
    "COUPLINGS",
    "DEFAULT_MAX_EXAMPLES",
    "Coupling",
    "GradientWriteWarning",
    "check_weight_decay",
]

Coupling = Literal[
    "coupled",
    "decoupled",
    "decoupled-after",
    "independent",
    "corrected",
    "corrected-max",
    "proximal",
    "adaptive",
]
#: The names :func:`check_weight_decay` accepts for ``coupling``.
COUPLINGS: tuple[str, ...] = tuple(CONTRACTS)
#: Enough for every mistake in the test suite's list to be found, in well under a second each.
DEFAULT_MAX_EXAMPLES = 30
#: How much smaller than λ the probe for a jump at λ = 0 makes the decay.
_TINY_DECAY = 1e-7
#: How much smaller than that the second probe makes it, to see whether the effect follows.
_PROBE_RATIO = 100.0
# Keys the check sets itself; accepting them from the caller would silently be overridden.
_RESERVED_KWARGS = frozenset({"params", "lr", "weight_decay"})
_GRAD_WRITES = ("warn", "fail", "ignore")


class GradientWriteWarning(UserWarning):
    """The optimizer wrote into ``.grad``, which belongs to the caller (clipping, logging)."""


def check_weight_decay(
    factory: Callable[..., torch.optim.Optimizer],
    coupling: str | DecayContract,
    *,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    steps: int = 4,
    warmup_steps: int = 16,
    dtype: torch.dtype | Sequence[torch.dtype] = torch.float64,
    device: str | torch.device = "cpu",
    shapes: st.SearchStrategy[tuple[int, ...]] | None = None,
    group_options: Mapping[str, Any] | None = None,
    closure: bool = False,
    grad_writes: Literal["warn", "fail", "ignore"] = "warn",
    max_decay_per_step: float = 0.5,
    ulps: float = 64.0,
    seed: int | None = None,
    hypothesis_settings: settings | None = None,
) -> None:
    """Property-test that ``factory`` applies weight decay as ``coupling`` says.

    Each example builds the optimizer over two or three parameter groups with their own ``lr``,
    ``weight_decay`` and dtype (the constructor's defaults differ from all of them), changes
    the lr between steps as a scheduler would, takes ``steps`` steps (more while the optimizer
    has not started moving, up to ``warmup_steps`` more), and after every step checks that

    * each parameter with a gradient matches the contract's twin run, within
      ``ulps · eps · (size of the update's terms)``;
    * each parameter whose ``.grad`` is ``None`` has not changed at all (not even decayed);
      one parameter never gets a gradient and others lose theirs on some steps;
    * the optimizer has moved the weights and ``weight_decay`` made a difference, so that the
      check never passes because nothing happened.

    Every run gets its own copy of each gradient and the same random numbers. A write into
    ``.grad`` is reported apart from the verdict on the decay (``grad_writes``). On a failure the
    message names the step, group and parameter, shows the weights before, expected and actual,
    and says which other named contract held on that example, if any. Hypothesis adds the
    (shrunk) falsifying example.

    Hypothesis settings (e.g. ``derandomize``) come from the active profile unless
    ``hypothesis_settings`` is given; ``max_examples``, ``deadline=None`` and ``database=None``
    are always set here, and the slow "explain" phase is left out.

    Args:
        factory: called like an optimizer class:
            ``factory(param_groups, lr=..., weight_decay=..., **optimizer_kwargs)``.
        coupling: the contract the optimizer claims: a name from :data:`COUPLINGS`
            (``"coupled"``, ``"decoupled"``, ...) or a
            :class:`~wd_lightning.testing.DecayContract` for any other rule.
        optimizer_kwargs: further constructor arguments, e.g. ``{"momentum": 0.9}``; must not
            contain ``params``, ``lr`` or ``weight_decay``.
        max_examples: number of examples Hypothesis tries, at least 1.
        steps: steps per example, at least 1; use 3 or more to catch decay that is skipped
            on some steps.
        warmup_steps: further steps allowed, at least 0, for an optimizer that makes no update
            at first (RAdam's rectification, a window to fill) to start moving.
        dtype: ``torch.float32`` or ``torch.float64``, or a sequence of them from which each
            parameter group draws its own.
        device: where the parameters live.
        shapes: strategy for parameter shapes, e.g. ``tensor_shapes(min_dims=2)`` for an
            optimizer that only takes matrices; default: 0-, 1- and 2-d, sides up to 2.
        group_options: entries added to every parameter group, for optimizers that need flags
            on their groups (e.g. ``{"use_muon": True}``).
        closure: whether to pass ``step()`` a closure (returning a loss whose gradient is the
            drawn one), for optimizers that require it.
        grad_writes: what to do when ``step()`` writes into or replaces ``.grad``: ``"warn"``
            with a :class:`GradientWriteWarning`, ``"fail"``, or ``"ignore"``.
        max_decay_per_step: upper bound on each group's ``λ`` (and so on ``lr·λ``), in ``(0, 1)``.
        ulps: tolerance in units of ``eps`` per unit of term magnitude; positive.
        seed: fixes Hypothesis's random seed when given.
        hypothesis_settings: settings to start from instead of the active profile, e.g.
            ``settings(phases=[Phase.generate])`` to skip shrinking a failure.

    Raises:
        InvalidArgumentError: if an argument is invalid (raised before any example is run).
        AssertionError: if the contract is broken, the optimizer never moves, ignores
            ``weight_decay``, moves a parameter without a gradient, or (with
            ``grad_writes="fail"``) writes into ``.grad``.

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
    contract = contract_named(coupling)
    options, dtypes = _validated(
        factory,
        optimizer_kwargs=optimizer_kwargs,
        group_options=group_options,
        closure=closure,
        grad_writes=grad_writes,
        max_examples=max_examples,
        steps=steps,
        warmup_steps=warmup_steps,
        dtype=dtype,
        shapes=shapes,
        max_decay_per_step=max_decay_per_step,
        ulps=ulps,
        seed=seed,
        hypothesis_settings=hypothesis_settings,
    )
    parent = settings() if hypothesis_settings is None else hypothesis_settings
    examples = scenarios(
        steps=steps,
        dtypes=dtypes,
        device=torch.device(device),
        max_decay_per_step=max_decay_per_step,
        shapes=shapes,
    )
    # Kept outside Hypothesis: the last failing example is the shrunk one it reports, and the
    # first write into .grad is reported once, after the verdict on the decay.
    last_failure: list[Scenario] = []
    grad_write: list[str] = []

    @example_settings(parent, max_examples)
    @given(scenario=examples)
    def weight_decay_contract(scenario: Scenario) -> None:
        outcome = run_scenario(scenario, options, variants(contract), stop_at_first_mismatch=True)
        problem = _verdict(outcome, contract, options)
        if problem is None and outcome.grad_written is not None:
            if grad_writes == "fail":
                problem = (
                    f"at {outcome.grad_written}; the decay itself followed the contract, but the "
                    "gradient belongs to the caller (clipping, logging, gradient accumulation)."
                )
            elif not grad_write:
                grad_write.append(outcome.grad_written)
        if problem is not None:
            last_failure[:] = [scenario]
            raise AssertionError(
                f"weight-decay contract ({contract.name}) broken {problem}\n"
                f"contract: {contract.statement}; {scenario.summary()}"
            )

    if seed is not None:
        weight_decay_contract = hypothesis_seed(seed)(weight_decay_contract)
    try:
        weight_decay_contract()
    except AssertionError as error:
        if last_failure:
            _add_diagnosis(error, last_failure[0], contract, options)
        raise
    if grad_write and grad_writes == "warn":
        warnings.warn(
            f"{grad_write[0]}. The decay followed the contract; the gradient belongs to the "
            "caller (clipping, logging, gradient accumulation).",
            GradientWriteWarning,
            stacklevel=2,
        )


def example_settings(parent: settings, max_examples: int) -> settings:
    """The Hypothesis settings every check runs under, derived from ``parent``."""
    return settings(
        parent,
        max_examples=max_examples,
        deadline=None,
        database=None,
        # One clear failure is more useful here than a group of related ones.
        report_multiple_bugs=False,
        # The explain phase re-runs many variants of a failure; the message already says where.
        phases=[phase for phase in parent.phases if phase is not Phase.explain],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def _verdict(outcome: Outcome, contract: DecayContract, options: RunOptions) -> str | None:
    """The reason the example fails, or ``None`` if it passes."""
    if outcome.gradless_moved is not None:
        return f"at {outcome.gradless_moved}"
    if not held(contract, outcome.mismatches):
        mismatch = outcome.mismatches[contract.name]
        hint = ""
        if mismatch.ignores_decay():
            hint = (
                "\nThe weights are exactly those of a run with weight_decay=0: the optimizer "
                "ignores weight_decay here (does it take the decay under another name?)."
            )
        elif outcome.moved_at is None:
            hint = "\nThe run with weight_decay=0 had not moved the weights yet."
        return f"at {mismatch.describe(planned_steps=options.steps)}{hint}"
    steps = outcome.steps_run
    if outcome.moved_at is None:
        return (
            f": the optimizer never moved the weights in {steps} steps with weight_decay=0 "
            f"({options.steps} steps plus {options.warmup_steps} allowed for a warm-up), so "
            "nothing about its decay could be checked; does it need other options?"
        )
    if outcome.decay_effective_at is None:
        return (
            f": weight_decay had no effect in {steps} steps: every weight equals that of a run "
            "with weight_decay=0, so the optimizer ignores weight_decay (does it take the decay "
            "under another name?)."
        )
    return None


def _add_diagnosis(
    error: AssertionError, scenario: Scenario, contract: DecayContract, options: RunOptions
) -> None:
    """Say which named contract held on the failing example, and whether λ = 0 is special."""
    others = [c for c in CONTRACTS.values() if c.name != contract.name]
    try:
        twins = [variant for other in others for variant in variants(other)]
        outcome = run_scenario(scenario, options, twins, stop_at_first_mismatch=False)
        holding = [c.name for c in others if held(c, outcome.mismatches)]
        lines = []
        if _jumps_at_zero_decay(scenario, options):
            lines.append(
                "The optimizer behaves differently at weight_decay=0 than at a tiny "
                "weight_decay, beyond dropping the decay (for example a trust ratio applied "
                "only when weight_decay ≠ 0): no twin with weight_decay=0 can stand for it."
            )
        if holding and outcome.gradless_moved is None:
            lines.append(f"On this example these contracts held instead: {', '.join(holding)}.")
        elif outcome.gradless_moved is None:
            lines.append("No named contract held on this example.")
    except Exception as failure:  # the diagnosis must never hide the original failure
        lines = [f"(no diagnosis: {type(failure).__name__}: {failure})"]
    message = "\n".join([str(error.args[0]) if error.args else "", *lines])
    error.args = (message, *error.args[1:])


def _jumps_at_zero_decay(scenario: Scenario, options: RunOptions) -> bool:
    """Whether the effect of a tiny λ stays the same size as λ shrinks further.

    Near λ = 0 a decay changes the weights in proportion to λ: a hundredfold smaller λ makes
    a hundredfold smaller difference from the run with ``weight_decay=0``. A switch on λ ≠ 0
    (a trust ratio applied only with decay) changes the step by the same amount however small
    λ is. Comparing the two probes, rather than one probe with the size of the weights, also
    sees a switch whose effect is small beside the weights because the lr is small.
    """
    larger = run_scenario(
        scenario, options, [], stop_at_first_mismatch=False, decay_scale=_TINY_DECAY
    )
    # The same number of steps for both probes, however soon each sees the decay take effect.
    same_steps = replace(options, steps=larger.steps_run, warmup_steps=0)
    smaller = run_scenario(
        scenario,
        same_steps,
        [],
        stop_at_first_mismatch=False,
        decay_scale=_TINY_DECAY / _PROBE_RATIO,
    )
    initial = [p.init for g in scenario.groups for p in g.params]
    probes = zip(larger.final_real, smaller.final_real, smaller.final_bare, initial, strict=True)
    for with_larger, with_smaller, bare, init in probes:
        if not init.numel():
            continue
        finfo = torch.finfo(init.dtype)
        size = max(float(init.abs().max()), float((bare - init).abs().max()))
        # Differences at the level of rounding say nothing either way.
        rounding = options.ulps * finfo.eps * larger.steps_run * size + finfo.tiny
        larger_effect = float((with_larger - bare).abs().max())
        smaller_effect = float((with_smaller - bare).abs().max())
        # A decay's effect shrinks with λ, here a hundredfold; one that shrinks less than
        # tenfold does not follow λ down to 0.
        if smaller_effect > rounding and smaller_effect > 10 * larger_effect / _PROBE_RATIO:
            return True
    return False


def check_factory(factory: object) -> None:
    """Accept ``factory`` if it can be called like an optimizer class."""
    if not callable(factory):
        raise InvalidArgumentError("factory", factory, "a callable like an optimizer class")


def check_free_of_reserved(argument: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, if it sets none of the keys the check sets itself."""
    given = dict(options or {})
    clashing = sorted(_RESERVED_KWARGS.intersection(given))
    if clashing:
        raise InvalidArgumentError(
            argument, clashing, "no params, lr or weight_decay: the check sets them"
        )
    return given


def _validated(
    factory: object,
    *,
    optimizer_kwargs: Mapping[str, Any] | None,
    group_options: Mapping[str, Any] | None,
    closure: object,
    grad_writes: object,
    max_examples: object,
    steps: object,
    warmup_steps: object,
    dtype: object,
    shapes: object,
    max_decay_per_step: float,
    ulps: float,
    seed: object,
    hypothesis_settings: object,
) -> tuple[RunOptions, tuple[torch.dtype, ...]]:
    """Reject bad arguments up front, so a typo is not reported as a broken optimizer."""
    check_factory(factory)
    kwargs = check_free_of_reserved("optimizer_kwargs", optimizer_kwargs)
    extra = check_free_of_reserved("group_options", group_options)
    check_int_at_least("max_examples", max_examples, 1)
    check_int_at_least("steps", steps, 1)
    check_int_at_least("warmup_steps", warmup_steps, 0)
    dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)  # type: ignore[arg-type]
    if not dtypes or any(d not in (torch.float32, torch.float64) for d in dtypes):
        raise InvalidArgumentError(
            "dtype", dtype, "torch.float32 or torch.float64, or a sequence of them"
        )
    if shapes is not None and not isinstance(shapes, st.SearchStrategy):
        raise InvalidArgumentError("shapes", shapes, "a Hypothesis strategy of shapes, or None")
    check_one_of("closure", closure, (False, True))
    check_one_of("grad_writes", grad_writes, _GRAD_WRITES)
    check_in_range("max_decay_per_step", max_decay_per_step, 0.0, 1.0, closed="neither")
    check_finite_positive("ulps", ulps)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgumentError("seed", seed, "an integer or None")
    if hypothesis_settings is not None and not isinstance(hypothesis_settings, settings):
        raise InvalidArgumentError(
            "hypothesis_settings", hypothesis_settings, "a hypothesis.settings object or None"
        )
    options = RunOptions(
        factory=factory,  # type: ignore[arg-type]
        kwargs=kwargs,
        group_options=extra,
        closure=closure,
        steps=steps,  # type: ignore[arg-type]
        warmup_steps=warmup_steps,  # type: ignore[arg-type]
        ulps=ulps,
    )
    return options, dtypes
