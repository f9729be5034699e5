"""MemberMetrics: each member's value is what its own metric object computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import PearsonCorrCoef, R2Score, SpearmanCorrCoef

from wd_lightning.sweep.member_metrics import MemberMetrics

MEMBERS = 4


def _regression_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(MEMBERS, 6, generator=generator), torch.randn(6, generator=generator))
        for _ in range(3)
    ]


def _classification_batches(seed: int, classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(MEMBERS, 8, classes, generator=generator).softmax(-1),
            torch.randint(0, classes, (8,), generator=generator),
        )
        for _ in range(3)
    ]


def _binary_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(MEMBERS, 8, generator=generator),
            torch.randint(0, 2, (8,), generator=generator),
        )
        for _ in range(3)
    ]


def _one_by_one(template: MetricCollection, batches) -> dict[str, torch.Tensor]:
    """What one metric collection per member computes: the reference."""
    copies = [copy.deepcopy(template) for _ in range(MEMBERS)]
    for predictions, targets in batches:
        for member, metrics in enumerate(copies):
            metrics.update(predictions[member], targets)
    computed = [metrics.compute() for metrics in copies]
    return {tag: torch.stack([c[tag].float() for c in computed]) for tag in computed[0]}


CASES = {
    # metric, batches, computed for all members at once?
    "mse": (MeanSquaredError(), _regression_batches(0), True),
    "mae": (MeanAbsoluteError(), _regression_batches(1), True),
    "r2": (R2Score(), _regression_batches(2), False),
    "pearson": (PearsonCorrCoef(), _regression_batches(3), False),
    "spearman (list states)": (SpearmanCorrCoef(), _regression_batches(4), False),
    "multiclass accuracy": (
        MulticlassAccuracy(num_classes=3),
        _classification_batches(5, 3),
        False,
    ),
    "macro f1": (
        MulticlassF1Score(num_classes=4, average="macro"),
        _classification_batches(6, 4),
        False,
    ),
    "binary accuracy": (BinaryAccuracy(), _binary_batches(7), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_member_gets_what_its_own_metric_computes(case):
    metric, batches, stacked = CASES[case]
    template = MetricCollection({"m": metric}, prefix="val/")
    members = MemberMetrics(template, MEMBERS)
    for _ in range(2):  # and again after a reset
        for predictions, targets in batches:
            members.update(predictions, targets)
        computed = members.compute()
        members.reset()
        expected = _one_by_one(template, batches)
        assert computed.keys() == expected.keys() == {"val/m"}
        torch.testing.assert_close(computed["val/m"], expected["val/m"], rtol=1e-6, atol=1e-7)
    assert (members.stacked_names() == ["val/m"]) is stacked


def test_several_metrics_share_the_collection_and_each_takes_its_own_path():
    template = MetricCollection(
        {"mse": MeanSquaredError(), "accuracy": BinaryAccuracy()}, prefix="val/"
    )
    members = MemberMetrics(template, MEMBERS)
    batches = [(torch.rand(MEMBERS, 8), torch.randint(0, 2, (8,))) for _ in range(2)]
    for predictions, targets in batches:
        members.update(predictions, targets.float())
    computed = members.compute()
    expected = _one_by_one(template, [(p, t.float()) for p, t in batches])
    assert computed.keys() == expected.keys()
    for tag in expected:
        torch.testing.assert_close(computed[tag], expected[tag])
    assert members.stacked_names() == ["val/mse"]


class _BatchedUntilSecondUpdate(Metric):
    """A sum whose second update reads its inputs' values, which vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.calls = 0

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.calls += 1
        if self.calls > 1:
            predictions = predictions[predictions > -100.0]  # a boolean mask: dynamic shape
        self.total += (predictions.sum() - targets.sum()).abs()
        self.count += 1

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def test_a_metric_that_stops_batching_carries_over_what_it_accumulated():
    template = MetricCollection({"m": _BatchedUntilSecondUpdate()}, prefix="val/")
    members = MemberMetrics(template, MEMBERS)
    batches = _regression_batches(8)
    members.update(*batches[0])
    assert members.stacked_names() == ["val/m"]
    for predictions, targets in batches[1:]:
        members.update(predictions, targets)
    assert members.stacked_names() == []
    expected = _one_by_one(template, batches)
    torch.testing.assert_close(members.compute()["val/m"], expected["val/m"])


def test_only_one_number_per_member_is_kept():
    # A per-class metric has no single value per member; a fit would not log it either.
    template = MetricCollection(
        {"per_class": MulticlassAccuracy(num_classes=3, average=None), "mse": MeanSquaredError()},
        prefix="val/",
    )
    members = MemberMetrics(template, MEMBERS)
    predictions, targets = _classification_batches(9, 3)[0]
    members.metrics["val__per_class"].update(predictions, targets)
    members.metrics["val__mse"].update(predictions[..., 0], targets.float())
    assert list(members.compute()) == ["val/mse"]


def test_stacked_states_stay_out_of_checkpoints():
    members = MemberMetrics(MetricCollection({"mse": MeanSquaredError()}), MEMBERS)
    assert members.state_dict() == {}
