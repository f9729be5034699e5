"""Find out which weight-decay contract an optimizer implements, instead of checking one.

:func:`identify_weight_decay` runs every named contract of
:mod:`wd_lightning.testing.decay_contracts` side by side on the same examples, and reports
those that held on all of them, or the evidence against each when none did. It first finds a
way to run the optimizer at all: float64 or float32, any shape or matrices only, with or
without a closure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed

from wd_lightning.core.errors import check_finite_positive, check_int_at_least
from wd_lightning.testing.contract import (
    _RESERVED_KWARGS,
    _jumps_at_zero_decay,
    check_factory,
    check_free_of_reserved,
    example_settings,
)
from wd_lightning.testing.decay_contracts import CONTRACTS, DecayContract, held, variants
from wd_lightning.testing.strategies import tensor_shapes
from wd_lightning.testing.twin_runs import (
    GroupCase,
    Outcome,
    ParamCase,
    RunOptions,
    Scenario,
    run_scenario,
    scenarios,
)

__all__ = ["DecayIdentification", "identify_weight_decay"]

_RAISED = "step() raised"
# Contracts that a more specific one implies: reported only when nothing more specific held.
_CATCH_ALL = ("adaptive",)


@dataclass(frozen=True)
class DecayIdentification:
    """What :func:`identify_weight_decay` found.

    Attributes:
        optimizer: the optimizer's name.
        contracts: the named contracts that held on every example (most specific first);
            empty when none did.
        evidence: for each contract that failed, where and how, on the first example.
        problems: findings that stop any contract from being credited: an error while
            stepping, weights that never moved, ``weight_decay`` without effect, a parameter
            without a gradient that moved.
        notes: findings beside the verdict: writes into ``.grad``, steps of warm-up, a jump in
            behaviour at ``weight_decay=0``.
        setup: how the optimizer was run (dtype, shapes, closure).
        examples: how many examples were run.
    """

    optimizer: str
    contracts: tuple[str, ...]
    evidence: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    setup: str = ""
    examples: int = 0

    @property
    def verdict(self) -> str:
        """The contracts that held, joined by " and ", or ``"none"``."""
        if self.problems and not self.contracts:
            return "none"
        return " and ".join(self.contracts) if self.contracts else "none"

    def __str__(self) -> str:
        lines = [f"{self.optimizer}: weight decay is {self.verdict}"]
        lines.append(f"  run with {self.setup}; {self.examples} examples")
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        if not self.contracts:
            for name, text in self.evidence.items():
                first_line = text.splitlines()[0]
                lines.append(f"  not {name}: {first_line}")
        return "\n".join(lines)


@dataclass
class _Findings:
    mismatches: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    grad_written: str | None = None
    warmup: int | None = None
    examples: int = 0
    first_failing: Scenario | None = None
    steps: int = 0
    unmoved: list[int] = field(default_factory=list)
    without_effect: list[int] = field(default_factory=list)
    informative: int = 0


def identify_weight_decay(
    factory: Callable[..., torch.optim.Optimizer],
    *,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    group_options: Mapping[str, Any] | None = None,
    max_examples: int = 20,
    steps: int = 4,
    warmup_steps: int = 16,
    device: str | torch.device = "cpu",
    ulps: float = 64.0,
    seed: int = 0,
) -> DecayIdentification:
    """Run every named contract on the same examples and report which held.

    Args:
        factory: called like an optimizer class:
            ``factory(param_groups, lr=..., weight_decay=..., **optimizer_kwargs)``.
        optimizer_kwargs: further constructor arguments; not ``params``, ``lr``,
            ``weight_decay``.
        group_options: entries added to every parameter group.
        max_examples: examples to run, at least 1.
        steps: steps per example, at least 1.
        warmup_steps: further steps allowed for the optimizer to start moving.
        device: where the parameters live.
        ulps: tolerance in units of ``eps`` per unit of term magnitude.
        seed: hypothesis's seed: the same seed gives the same examples and report.

    Returns:
        The contracts that held, the evidence against the others, and findings such as
        writes into ``.grad``.

    Raises:
        InvalidArgumentError: if an argument is invalid.

    Example:
        >>> import torch
        >>> identify_weight_decay(torch.optim.AdamW, max_examples=5).verdict
        'decoupled'
        >>> identify_weight_decay(torch.optim.Adam, max_examples=5).verdict
        'coupled'
    """
    check_factory(factory)
    kwargs = check_free_of_reserved("optimizer_kwargs", optimizer_kwargs)
    extra = check_free_of_reserved("group_options", group_options)
    check_int_at_least("max_examples", max_examples, 1)
    check_int_at_least("steps", steps, 1)
    check_int_at_least("warmup_steps", warmup_steps, 0)
    check_int_at_least("seed", seed, 0)
    check_finite_positive("ulps", ulps)
    name = getattr(factory, "__qualname__", None) or getattr(
        getattr(factory, "func", None), "__qualname__", repr(factory)
    )
    device = torch.device(device)
    base = RunOptions(factory, kwargs, extra, False, steps, warmup_steps, ulps)
    found = _find_setup(base, device)
    if isinstance(found, str):
        return DecayIdentification(name, (), problems=(found,), setup="no setup that runs")
    options, dtype, matrices_only = found
    findings = _run_examples(options, dtype, matrices_only, device, max_examples, steps, seed)
    if not matrices_only and any(p.startswith(_RAISED) for p in findings.problems):
        # The probe's shapes ran, but some drawn shape did not: matrices may be all it takes.
        on_matrices = _run_examples(options, dtype, True, device, max_examples, steps, seed)
        if not any(p.startswith(_RAISED) for p in on_matrices.problems):
            findings, matrices_only = on_matrices, True
    contracts = _contracts_held(findings)
    notes = []
    if not contracts and not findings.problems and dtype == torch.float64:
        # Some optimizers compute in float32 whatever the parameters' dtype: in float64 no
        # contract then holds to float64 precision, while in float32 the rule itself shows.
        in_float32 = _run_examples(
            options, torch.float32, matrices_only, device, max_examples, steps, seed
        )
        if _contracts_held(in_float32):
            notes.append(
                "no contract holds to float64 precision, but one does in float32: the "
                "optimizer computes in lower precision than the parameters' dtype"
            )
            findings, dtype = in_float32, torch.float32
            contracts = _contracts_held(findings)
    setup = (
        f"{str(dtype).removeprefix('torch.')}, "
        f"{'matrices only' if matrices_only else '0- to 2-d parameters'}"
        f"{', a closure' if options.closure else ''}"
        f"{''.join(f', groups with {k}={v!r}' for k, v in options.group_options.items())}"
    )
    if findings.grad_written is not None:
        notes.append(f"writes into .grad: {findings.grad_written}")
    skipped = len(findings.unmoved) + len(findings.without_effect)
    if skipped and findings.informative:
        notes.append(
            f"{skipped} of {findings.examples} examples were left out: the weights did not "
            "move, or weight_decay made no difference"
        )
    if findings.warmup is not None and findings.warmup > steps:
        notes.append(f"made its first update only after {findings.warmup} steps (warm-up)")
    if not contracts and findings.first_failing is not None:
        try:
            if _jumps_at_zero_decay(findings.first_failing, options):
                notes.append(
                    "behaves differently at weight_decay=0 than at a tiny weight_decay, beyond "
                    "dropping the decay (e.g. a trust ratio applied only when λ ≠ 0)"
                )
        except Exception as error:  # a probe that fails must not hide the report
            notes.append(f"λ=0 probe failed: {type(error).__name__}: {error}")
    return DecayIdentification(
        optimizer=name,
        contracts=contracts,
        evidence={n: m for n, m in findings.mismatches.items() if n in CONTRACTS},
        problems=tuple(findings.problems),
        notes=tuple(notes),
        setup=setup,
        examples=findings.examples,
    )


def _contracts_held(findings: _Findings) -> tuple[str, ...]:
    if findings.problems:
        return ()
    holding = [c.name for c in CONTRACTS.values() if held(c, findings.mismatches)]
    specific = [c for c in holding if c not in _CATCH_ALL]
    return tuple(specific or holding)


def _find_setup(
    base: RunOptions, device: torch.device
) -> tuple[RunOptions, torch.dtype, bool] | str:
    """The first way to run the optimizer without an error, or the first error."""
    found = _find_setup_with(base, device)
    flag = _missing_group_flag(found) if isinstance(found, str) else None
    if flag is not None:
        # Optimizers such as Muon variants insist on a flag on each group: set it and retry.
        flagged = RunOptions(
            base.factory,
            base.kwargs,
            {**base.group_options, flag: True},
            base.closure,
            base.steps,
            base.warmup_steps,
            base.ulps,
        )
        retried = _find_setup_with(flagged, device)
        if not isinstance(retried, str):
            return retried
    return found


_MISSING_FLAG = re.compile(r"(?:KeyError: '(\w+)'|`(\w+)` must be set)")


def _missing_group_flag(error: str) -> str | None:
    match = _MISSING_FLAG.search(error)
    if match is None:
        return None
    flag = match.group(1) or match.group(2)
    return None if flag in _RESERVED_KWARGS else flag


def _find_setup_with(
    base: RunOptions, device: torch.device
) -> tuple[RunOptions, torch.dtype, bool] | str:
    first_error: str | None = None
    for closure in (False, True):
        options = RunOptions(
            base.factory,
            base.kwargs,
            base.group_options,
            closure,
            base.steps,
            base.warmup_steps,
            base.ulps,
        )
        for dtype in (torch.float64, torch.float32):
            for matrices_only in (False, True):
                try:
                    run_scenario(
                        _probe_scenario(dtype, matrices_only, device, base.steps),
                        options,
                        [v for c in CONTRACTS.values() for v in variants(c)],
                        stop_at_first_mismatch=False,
                    )
                except Exception as error:
                    if first_error is None:
                        first_error = f"{type(error).__name__}: {error}".splitlines()[0]
                    continue
                return options, dtype, matrices_only
    if first_error is not None and "weight_decay" in first_error:
        return f"does not accept weight_decay ({first_error})"
    return f"could not be run in any setup; first error: {first_error}"


def _probe_scenario(
    dtype: torch.dtype, matrices_only: bool, device: torch.device, steps: int
) -> Scenario:
    shapes = [(2, 2), (2, 2)] if matrices_only else [(2, 2), (2,), ()]
    generator = torch.Generator().manual_seed(0)

    def values(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype) + 0.5

    def case(shape: tuple[int, ...], gradless: bool = False) -> ParamCase:
        grads = (None,) * steps if gradless else tuple(values(shape) for _ in range(steps))
        return ParamCase(init=values(shape), grads=grads)

    first = GroupCase(0.1, 0.1, (case(shapes[0]), case(shapes[1], gradless=True)))
    second = GroupCase(0.05, 0.0, tuple(case(shape) for shape in shapes[1:]))
    return Scenario(0.2, 0.3, (first, second), (1.0,) + (0.5,) * (steps - 1))


def _run_examples(
    options: RunOptions,
    dtype: torch.dtype,
    matrices_only: bool,
    device: torch.device,
    max_examples: int,
    steps: int,
    seed: int,
) -> _Findings:
    findings = _Findings(steps=steps)
    shapes = tensor_shapes(min_dims=2, max_dims=2, max_side=2) if matrices_only else None
    examples = scenarios(
        steps=steps, dtypes=(dtype,), device=device, max_decay_per_step=0.5, shapes=shapes
    )
    contracts: list[DecayContract] = [v for c in CONTRACTS.values() for v in variants(c)]
    parent = settings(derandomize=False, phases=[Phase.generate])

    @example_settings(parent, max_examples)
    @given(scenario=examples)
    def every_contract(scenario: Scenario) -> None:
        if findings.problems:
            return
        findings.examples += 1
        try:
            outcome = run_scenario(scenario, options, contracts, stop_at_first_mismatch=False)
        except Exception as error:
            findings.problems.append(
                f"{_RAISED} {type(error).__name__}: {str(error).splitlines()[0]} "
                f"({scenario.summary()})"
            )
            return
        _record(findings, outcome, scenario)

    hypothesis_seed(seed)(every_contract)()
    if not findings.informative and not findings.problems:
        if findings.unmoved and not findings.without_effect:
            findings.problems.append(
                f"never moved the weights in {max(findings.unmoved)} steps with weight_decay=0"
            )
        elif findings.without_effect or findings.unmoved:
            findings.problems.append(
                f"weight_decay had no effect in {findings.steps} steps or more: it is ignored"
            )
    return findings


def _record(findings: _Findings, outcome: Outcome, scenario: Scenario) -> None:
    if outcome.gradless_moved is not None:
        findings.problems.append(outcome.gradless_moved)
        return
    if outcome.moved_at is None:
        # Not evidence for or against any contract; a problem only if no example moved.
        findings.unmoved.append(outcome.steps_run)
        return
    if outcome.decay_effective_at is None:
        findings.without_effect.append(outcome.steps_run)
        return
    findings.informative += 1
    # The earliest first move over the examples is the optimizer's warm-up; a later one only
    # means that example's first update rounded to nothing.
    findings.warmup = (
        outcome.moved_at if findings.warmup is None else min(findings.warmup, outcome.moved_at)
    )
    if findings.grad_written is None:
        findings.grad_written = outcome.grad_written
    for name, mismatch in outcome.mismatches.items():
        if name not in findings.mismatches:
            if findings.first_failing is None:
                findings.first_failing = scenario
            hint = " (weights equal the weight_decay=0 run's)" if mismatch.ignores_decay() else ""
            findings.mismatches[name] = (
                mismatch.describe(planned_steps=findings.steps, show_tensors=False) + hint
            )
