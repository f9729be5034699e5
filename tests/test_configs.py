"""Every shipped config parses, instantiates, and runs the article's experiment."""

import importlib.util
import runpy
import statistics

import pytest
import torch

from tests.fits import CONFIGS, REPO
from wd_lightning.cli import WeightDecayCLI, main
from wd_lightning.sweep.plots import FIGURES, read_table

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
# Sweep configs hold the grid (weight_decays, seeds) on top of a fit's sections.
SWEEPS = [path for path in SHIPPED if "weight_decays:" in path.read_text()]
FITS = [path for path in SHIPPED if path not in SWEEPS]
# The digits configs need scikit-learn (the "digits" extra), which ships the data.
NEEDS_SKLEARN = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="scikit-learn (the 'digits' extra: pip install 'wd-lightning[digits]') ships the digits",
)


def _marked(paths):
    return [
        pytest.param(path, marks=NEEDS_SKLEARN) if path.name.startswith("digits") else path
        for path in paths
    ]


QUIET = [
    "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def test_configs_are_shipped():
    assert {path.name for path in FITS} >= {"d2l_no_decay.yaml", "d2l_weight_decay.yaml"}
    assert {path.name for path in SWEEPS} == {"sweep.yaml", "ucurve.yaml", "digits_sweep.yaml"}
    assert "digits_fit.yaml" in {path.name for path in FITS}


@pytest.mark.parametrize("config", _marked(FITS), ids=lambda path: path.name)
def test_config_parses_and_instantiates(config):
    cli = WeightDecayCLI(args=["--config", str(config)], run=False)
    optimizer = cli.model.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    assert [group["name"] for group in optimizer.param_groups][:2] == ["decay", "no_decay"]
    assert "#" in config.read_text(), "shipped configs are commented"


@pytest.fixture(scope="module")
def book_numbers():
    """examples/book_numbers.py: its functions, and its five-seed runs of both configs."""
    script = runpy.run_path(str(REPO / "examples" / "book_numbers.py"))
    return script, script["measure_all"]()


@pytest.mark.slow
def test_no_decay_overfits_and_decay_shrinks_w_for_every_seed(book_numbers):
    _, runs = book_numbers
    for run in runs["d2l_no_decay"]:
        assert 12 <= run.weight_norm <= 15.5 and run.val_loss > 30
    for run in runs["d2l_weight_decay"]:
        assert 0.33 <= run.weight_norm <= 0.42 and run.val_loss < 0.3


@pytest.mark.slow
@pytest.mark.parametrize("config", ["d2l_no_decay", "d2l_weight_decay"])
def test_config_comment_quotes_its_measured_seed_0_run(book_numbers, config):
    script, runs = book_numbers
    assert script["comment_line"](runs[config][0]) in (CONFIGS / f"{config}.yaml").read_text()


@pytest.mark.slow
def test_docs_quote_the_measured_five_seed_table(book_numbers):
    script, runs = book_numbers
    page = (REPO / "docs" / "book.md").read_text()
    assert script["table"](runs) in page
    assert f"by a factor of {script['ratio'](runs)}" in page
    # The summary a seed-0 run prints, as the page shows it (fit_summary's layout).
    run = runs["d2l_weight_decay"][0]
    for tag, value in [
        ("train/loss", run.train_loss),
        ("val/loss", run.val_loss),
        ("weight_norm/decay", run.weight_norm),
    ]:
        assert f"\n  {tag:<20}  {value:.6g}\n" in page, tag


@pytest.mark.slow
def test_mlp_classifier_example_learns(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "mlp_classifier.yaml"), "--trainer.max_epochs", "5"]
    cli = WeightDecayCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    groups = cli.trainer.optimizers[0].param_groups
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert groups[0]["param_names"] == ["layers.0.weight", "layers.3.weight", "layers.6.weight"]
    assert cli.trainer.callback_metrics["val/accuracy"] > 0.6  # chance is 1/3


@pytest.mark.parametrize("config", _marked(SWEEPS), ids=lambda path: path.name)
def test_sweep_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--config", str(config), "--print_config"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    model = "WeightDecayModule" if config.name.startswith("digits") else "LinearRegression"
    assert "weight_decays:" in printed and f"wd_lightning.{model}" in printed
    assert "#" in config.read_text(), "shipped configs are commented"


def _sweep(config: str, tmp_path) -> tuple[dict[float, list[dict]], list[dict]]:
    """The shipped sweep's summary rows by λ, and its closed-form ridge curve."""
    output_dir = tmp_path / "sweep"
    main(["sweep", "--config", str(CONFIGS / config), "--output_dir", str(output_dir)])
    figures = {path.name for path in (output_dir / "figures").glob("*.png")}
    assert figures == {*FIGURES, "val_mse_vs_weight_decay.png"}
    by_weight_decay: dict[float, list[dict]] = {}
    for row in read_table(output_dir / "summary.csv"):
        by_weight_decay.setdefault(row["weight_decay"], []).append(row)
    return by_weight_decay, read_table(output_dir / "ridge_curve.csv")


def _quoted(value: float) -> str:
    """A number as the configs' comments round it: two significant digits."""
    return f"{value:.2g}"


def _median(rows: list[dict], column: str) -> float:
    return statistics.median(row[column] for row in rows)


@pytest.mark.slow
def test_book_sweep_reproduces_the_article_and_marks_divergence(tmp_path):
    rows, ridge_curve = _sweep("sweep.yaml", tmp_path)
    # configs/ucurve.yaml quotes the book's converged held-out range from this curve.
    ridge_losses = [row["ridge_val_loss"] for row in ridge_curve]
    assert (_quoted(min(ridge_losses)), _quoted(max(ridge_losses))) == ("0.0089", "0.0097")
    assert len(rows) >= 12 and all(len(members) == 5 for members in rows.values())
    assert 12 <= _median(rows[0], "weight_norm") <= 15.5
    assert 0.33 <= _median(rows[3], "weight_norm") <= 0.42
    assert _median(rows[0], "val_loss") / _median(rows[3], "val_loss") > 300
    assert all(row["status"] == "diverged" for row in rows[1000])
    trained = [row for wd, members in rows.items() if wd < 1000 for row in members]
    assert all(row["status"] == "ok" for row in trained)
    # λ = 3 ends about 10·‖w*‖ from the ridge optimum: mostly decayed initial weights.
    assert 5 < _median(rows[3], "weight_norm") / _median(rows[3], "ridge_weight_norm") < 20
    assert _median(rows[3], "null_space_norm") > 0.8 * _median(rows[3], "weight_norm")


@pytest.mark.slow
def test_ucurve_sweep_has_a_u_shaped_held_out_loss(tmp_path):
    rows, ridge_curve = _sweep("ucurve.yaml", tmp_path)
    # The numbers configs/ucurve.yaml quotes.
    ridge_at = {row["weight_decay"]: row["ridge_val_loss"] for row in ridge_curve}
    best_ridge = min(ridge_at, key=ridge_at.get)
    assert _quoted(ridge_at[0.0]) == "0.086" and _quoted(ridge_at[best_ridge]) == "0.0098"
    assert 0.3 < best_ridge < 0.8
    assert _quoted(rows[30][0]["ridge_val_loss"]) == "0.014"
    assert _quoted(_median(rows[0], "val_loss")) == "0.046"
    held_out = {wd: _median(members, "val_loss") for wd, members in sorted(rows.items())}
    best = min(held_out, key=held_out.get)
    smallest, largest = min(held_out), max(held_out)
    assert smallest < best < largest
    assert held_out[smallest] > 2 * held_out[best] and held_out[largest] > 1.2 * held_out[best]
    ridge = {wd: members[0]["ridge_val_loss"] for wd, members in rows.items()}
    assert ridge[smallest] > 2 * min(ridge.values()) and ridge[largest] > min(ridge.values())


@NEEDS_SKLEARN
@pytest.mark.slow
def test_digits_fit_runs_and_shows_the_timescale(tmp_path, caplog):
    # A few epochs only: the full run is the README's command, not a test.
    args = ["fit", "--config", str(CONFIGS / "digits_fit.yaml"), "--trainer.max_epochs", "10"]
    with caplog.at_level("INFO"):
        cli = WeightDecayCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert isinstance(cli.trainer.optimizers[0], torch.optim.AdamW)
    assert cli.trainer.global_step == 40
    assert cli.trainer.callback_metrics["val/accuracy"] > 0.5  # chance is 0.1; 0.754 measured
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert set(tested) == {"test/loss", "test/accuracy"} and tested["test/accuracy"] > 0.5
    weight_decay, lr = cli.model.weight_decay, cli.trainer.optimizers[0].param_groups[0]["lr"]
    decay_row = next(line for line in caplog.text.splitlines() if line.startswith("decay "))
    assert decay_row.split()[-2:] == [
        f"{1 / (lr * weight_decay):.3g}",
        f"{0.25 / (lr * weight_decay):.3g}",
    ]


@NEEDS_SKLEARN
@pytest.mark.slow
def test_digits_sweep_runs_from_the_cli(tmp_path):
    # The shipped grid's first and last λ, one seed, two epochs: the CLI path end to end.
    output_dir = tmp_path / "digits"
    config = str(CONFIGS / "digits_sweep.yaml")
    main(["sweep", "--config", config, "--output_dir", str(output_dir), "--seeds", "[0]",
          "--weight_decays", "[0, 30]", "--trainer.max_epochs", "2"])  # fmt: skip
    rows = read_table(output_dir / "summary.csv")
    assert [row["weight_decay"] for row in rows] == [0, 30]
    assert all(row["status"] == "ok" and 0 <= row["val_accuracy"] <= 1 for row in rows)
    assert rows[0]["timescale_steps"] == float("inf")
    assert rows[1]["init_remaining"] == pytest.approx((1 - 0.003 * 30) ** 8)
    figures = {path.name for path in (output_dir / "figures").glob("*.png")}
    assert "val_accuracy_vs_weight_decay.png" in figures
