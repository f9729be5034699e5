"""identify_weight_decay names the rule an optimizer follows, or says why none fits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

from wd_lightning.testing import identify_weight_decay

from . import broken_optimizers as broken
from . import contract_optimizers as rules

EXAMPLES = 8


@pytest.mark.parametrize(
    ("factory", "contracts"),
    [
        pytest.param(torch.optim.Adam, ("coupled",), id="Adam"),
        pytest.param(torch.optim.AdamW, ("decoupled",), id="AdamW"),
        pytest.param(torch.optim.SGD, ("coupled", "decoupled"), id="SGD-both"),
        pytest.param(broken.DecayAfterUpdateAdamW, ("decoupled-after",), id="decoupled-after"),
        pytest.param(broken.UnscaledDecayAdamW, ("independent",), id="independent"),
        pytest.param(rules.CorrectedDecaySGD, ("corrected",), id="corrected"),
        pytest.param(rules.MaxCorrectedDecaySGD, ("corrected-max",), id="corrected-max"),
        pytest.param(rules.ProximalSGD, ("proximal",), id="proximal"),
        pytest.param(rules.StepSizeDecayAdamW, ("adaptive",), id="adaptive"),
        # Without momentum, SGD's coupled decay is also decoupled.
        pytest.param(rules.NoisySGD, ("coupled", "decoupled"), id="stochastic"),
        pytest.param(broken.SignFlippedSGD, (), id="sign-flipped"),
        pytest.param(broken.SkipsDecayEveryThirdStepSGD, (), id="skips-decay"),
    ],
)
def test_names_the_rule(factory: Any, contracts: tuple[str, ...]) -> None:
    report = identify_weight_decay(factory, max_examples=EXAMPLES)
    assert report.contracts == contracts, str(report)


def test_no_rule_comes_with_evidence_against_each() -> None:
    report = identify_weight_decay(broken.SignFlippedSGD, max_examples=EXAMPLES)
    text = str(report)
    assert report.verdict == "none"
    assert text.startswith("SignFlippedSGD: weight decay is none\n")
    assert "  not coupled: step 1 of 4, group 0" in text
    assert "  not proximal: step" in text


def test_grad_writes_and_warmup_are_noted() -> None:
    assert any(
        note.startswith("writes into .grad")
        for note in identify_weight_decay(broken.GradMutatingSGD, max_examples=EXAMPLES).notes
    )
    report = identify_weight_decay(rules.WarmupSGD, max_examples=EXAMPLES)
    assert report.contracts == ("coupled",)
    assert "made its first update only after 7 steps (warm-up)" in report.notes


@pytest.mark.parametrize(
    ("factory", "problem"),
    [
        pytest.param(rules.NeverMovingSGD, "never moved the weights", id="never-moves"),
        pytest.param(rules.SignDecayIgnoredSGD, "weight_decay had no effect", id="ignored"),
        pytest.param(torch.optim.Rprop, "does not accept weight_decay", id="no-weight_decay"),
    ],
)
def test_blind_spots_are_problems_not_verdicts(factory: Any, problem: str) -> None:
    report = identify_weight_decay(factory, max_examples=EXAMPLES)
    assert report.contracts == ()
    assert any(problem in p for p in report.problems), str(report)


def test_jump_at_zero_decay_is_noted() -> None:
    # Vectors only would be fairer to trust ratios; the default shapes still show the jump.
    report = identify_weight_decay(rules.TrustRatioOnlyWithDecaySGD, max_examples=EXAMPLES)
    assert report.contracts == ()
    assert any("behaves differently at weight_decay=0" in note for note in report.notes)


def test_finds_a_setup_that_runs() -> None:
    assert "matrices only" in identify_weight_decay(rules.MatrixOnlySGD, max_examples=4).setup
    assert "a closure" in identify_weight_decay(rules.ClosureOnlySGD, max_examples=4).setup
    flagged = identify_weight_decay(_KeyedGroupsSGD, max_examples=4)
    assert "groups with use_flag=True" in flagged.setup
    assert flagged.contracts == ("coupled", "decoupled")


class _NoShortVectorsSGD(broken.HandWrittenSGD):
    """Raises on vectors of length 1, a shape the setup probe does not try."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        for group in self.param_groups:
            if any(p.shape == (1,) for p in group["params"]):
                raise RuntimeError("vectors of length 1 are not supported")
        return super().step(closure)


def test_falls_back_to_matrices_when_a_drawn_shape_fails() -> None:
    report = identify_weight_decay(_NoShortVectorsSGD, max_examples=EXAMPLES)
    assert "matrices only" in report.setup
    assert report.contracts == ("coupled", "decoupled"), str(report)


class _KeyedGroupsSGD(broken.HandWrittenSGD):
    """Reads a flag every group must carry, raising KeyError without it."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            _ = group["use_flag"]  # the lookup raises KeyError without the flag


class _Float32SGD(broken.HandWrittenSGD):
    """Coupled SGD that computes in float32 whatever the parameters' dtype."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                low = param.float()
                low.add_(param.grad.float() + group["weight_decay"] * low, alpha=-group["lr"])
                param.copy_(low)
        return None


def test_lower_precision_than_the_parameters_is_noted() -> None:
    report = identify_weight_decay(_Float32SGD, max_examples=EXAMPLES)
    assert "coupled" in report.contracts
    assert report.setup.startswith("float32")
    assert any("computes in lower precision" in note for note in report.notes)


def test_same_seed_same_report() -> None:
    first = identify_weight_decay(broken.SignFlippedSGD, max_examples=4, seed=3)
    assert str(first) == str(identify_weight_decay(broken.SignFlippedSGD, max_examples=4, seed=3))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"factory": "AdamW"}, "factory=.* is not allowed"),
        ({"optimizer_kwargs": {"weight_decay": 1}}, "optimizer_kwargs=.* is not allowed"),
        ({"group_options": {"params": []}}, "group_options=.* is not allowed"),
        ({"max_examples": 0}, "max_examples=0 is not allowed"),
        ({"warmup_steps": -1}, "warmup_steps=-1 is not allowed"),
        ({"seed": -1}, "seed=-1 is not allowed"),
        ({"ulps": 0}, "ulps=0 is not allowed"),
    ],
)
def test_rejects_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    factory = arguments.pop("factory", torch.optim.SGD)
    with pytest.raises(ValueError, match=message):
        identify_weight_decay(factory, **arguments)
