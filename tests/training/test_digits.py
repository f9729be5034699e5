"""scikit-learn's digits as a data module, the small conv net, and both through the sweep."""

import importlib.util
import runpy

import pytest
import torch
from lightning.pytorch import seed_everything
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from tests.fits import REPO, quiet_trainer
from wd_lightning import InvalidArgumentError, SmallConvNet, WeightDecayModule
from wd_lightning.training import digits
from wd_lightning.training.digits import DIGITS_EXAMPLES, DigitsDataModule

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="scikit-learn (the 'digits' extra: pip install 'wd-lightning[digits]') ships the digits",
)


@needs_sklearn
def test_splits_are_disjoint_balanced_and_scaled():
    data = DigitsDataModule(num_train=100, num_val=300, num_test=400, data_seed=3)
    data.setup()
    assert data.X_train.shape == (100, 1, 8, 8) and data.X_train.dtype == torch.float32
    assert (len(data.y_val), len(data.y_test)) == (300, 400)
    assert data.y_train.dtype == torch.long
    assert torch.bincount(data.y_train, minlength=10).tolist() == [10] * 10
    assert torch.bincount(data.y_val, minlength=10).tolist() == [30] * 10
    images = torch.cat([data.X_train, data.X_val, data.X_test]).flatten(1)
    assert images.min() >= 0.0 and images.max() == 1.0
    # Disjoint: no image appears in two splits (the data set has no exact duplicates).
    assert len(torch.unique(images, dim=0)) == len(images)
    assert [len(batch[0]) for batch in data.test_dataloader()] == [400]
    assert sum(len(batch[0]) for batch in data.train_dataloader()) == 100


@needs_sklearn
def test_the_split_depends_on_the_data_seed_only():
    first, again, other = (DigitsDataModule(data_seed=seed) for seed in (0, 0, 1))
    for data in (first, again, other):
        data.setup()
    assert torch.equal(first.X_train, again.X_train) and torch.equal(first.X_test, again.X_test)
    assert not torch.equal(first.X_train, other.X_train)


def test_too_many_examples_are_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="num_train \\+ num_val \\+ num_test=1800"):
        DigitsDataModule(num_train=800, num_val=500, num_test=500)
    assert DIGITS_EXAMPLES == 1797


def test_without_scikit_learn_the_message_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        digits.importlib.util, "find_spec", lambda name: None if name == "sklearn" else real(name)
    )
    with pytest.raises(InvalidArgumentError, match=r"pip install \"wd-lightning\[digits\]\""):
        DigitsDataModule()


@pytest.mark.parametrize(
    ("argument", "value"),
    [("image_size", 7), ("channels", (4,)), ("num_classes", 1), ("hidden_features", 0)],
)
def test_conv_net_arguments_are_checked(argument, value):
    with pytest.raises(InvalidArgumentError, match=f"{argument}="):
        SmallConvNet(**{argument: value})


def test_conv_net_decays_its_kernels_and_weights_only():
    module = WeightDecayModule(SmallConvNet(), weight_decay=0.1, loss=nn.CrossEntropyLoss())
    decay, no_decay = module.param_groups_report.groups[:2]
    assert decay["param_names"] == [
        "features.0.weight",
        "features.2.weight",
        "classifier.1.weight",
        "classifier.3.weight",
    ]
    assert all(name.endswith(".bias") for name in no_decay["param_names"])


def _digits_module(weight_decay: float, lr: float = 0.01) -> WeightDecayModule:
    return WeightDecayModule(
        SmallConvNet(channels=(4, 8), hidden_features=16),
        weight_decay=weight_decay,
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=lr),
        loss=nn.CrossEntropyLoss(),
        val_metrics={"accuracy": MulticlassAccuracy(num_classes=10, average="micro")},
    )


def _tiny_digits() -> DigitsDataModule:
    return DigitsDataModule(num_train=40, num_val=60, num_test=60, batch_size=10)


@needs_sklearn
@pytest.mark.slow
def test_a_conv_sweep_is_the_separate_fits(tmp_path):
    from wd_lightning.sweep.plots import read_table, write_figures
    from wd_lightning.sweep.run import run_sweep

    epochs, grid = 3, [0.0, 3.0]
    result = run_sweep(
        _digits_module,
        _tiny_digits(),
        weight_decays=grid,
        seeds=[0],
        output_dir=tmp_path / "sweep",
        trainer_kwargs={"max_epochs": epochs, "enable_progress_bar": False},
    )
    rows = {row["weight_decay"]: row for row in result.rows}
    for weight_decay in grid:
        seed_everything(0, verbose=False)
        module = _digits_module(weight_decay)
        trainer = quiet_trainer(max_epochs=epochs)
        trainer.fit(module, _tiny_digits())
        metrics = trainer.callback_metrics
        row = rows[weight_decay]
        assert row["val_loss"] == pytest.approx(metrics["val/loss"].item(), rel=1e-4)
        assert row["val_accuracy"] == pytest.approx(metrics["val/accuracy"].item(), abs=1e-6)
    # AdamW's decoupled decay: τ = 1/(lr·λ), and (1 − lr·λ)^T of the initial weights left.
    steps = epochs * 4
    assert rows[3.0]["timescale_steps"] == pytest.approx(1 / (0.01 * 3.0))
    assert rows[3.0]["init_remaining"] == pytest.approx((1 - 0.01 * 3.0) ** steps)
    assert rows[0.0]["timescale_steps"] == float("inf") and rows[0.0]["init_remaining"] == 1.0
    summary = read_table(tmp_path / "sweep" / "summary.csv")
    assert summary[1]["val_accuracy"] == pytest.approx(rows[3.0]["val_accuracy"])
    figures = [path.name for path in write_figures(tmp_path / "sweep")]
    assert "val_accuracy_vs_weight_decay.png" in figures
    # docs/digits.md's table is printed from the same summary by examples/sweep_table.py.
    script = runpy.run_path(str(REPO / "examples" / "sweep_table.py"))
    table = script["sweep_table"](tmp_path / "sweep", steps_per_epoch=4).splitlines()
    assert len(table) == 4 and table[2].startswith("| 0 | ∞ | ∞ | 1 |")
    assert table[3].startswith(f"| 3 | 33.3 | 8.33 | {(1 - 0.03) ** steps:.3g} |")
