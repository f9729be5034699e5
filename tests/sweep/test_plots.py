"""The figures: written, real images with content, and drawn again from the tables by ``plot``."""

import pytest

from wd_lightning import LinearRegression, SyntheticRegressionDataModule
from wd_lightning.cli import main
from wd_lightning.sweep.plots import FIGURES, _spread, read_table, write_figures
from wd_lightning.sweep.run import run_sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("sweep")
    run_sweep(
        lambda wd: LinearRegression(weight_decay=wd),
        SyntheticRegressionDataModule(),
        weight_decays=[0, 1, 3, 1000],
        seeds=[0, 1],
        output_dir=output_dir,
        trainer_kwargs={"max_epochs": 30, "enable_progress_bar": False},
    )
    return output_dir


def _assert_real_figure(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 15_000
    pixels = matplotlib.image.imread(path)[..., :3]
    height, width, _ = pixels.shape
    assert width >= 600 and height >= 350
    # Lines and labels, not an empty canvas: a share of pixels is neither white nor grey.
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.2
    assert coloured.mean() > 0.003, coloured.mean()
    assert (pixels.sum(axis=2) < 2.9).mean() > 0.01


def test_write_figures_draws_the_three_figures_and_one_per_metric(sweep_dir):
    paths = write_figures(sweep_dir)
    # LinearRegression validates with torchmetrics' MSE: the sweep's val_mse column.
    assert [path.name for path in paths] == [*FIGURES, "val_mse_vs_weight_decay.png"]
    for path in paths:
        _assert_real_figure(path)


def test_drawing_leaves_the_callers_matplotlib_as_it_was(sweep_dir):
    # A notebook user's backend (inline plots) and open figures must survive a drawing.
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    try:
        plt.switch_backend("svg")
        open_figure = plt.figure()
        write_figures(sweep_dir)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [open_figure.number]
    finally:
        plt.close("all")
        plt.switch_backend(before)


def test_plot_command_redraws_from_the_tables(sweep_dir, capsys):
    for path in (sweep_dir / "figures").glob("*.png"):
        path.unlink()
    main(["plot", "--output_dir", str(sweep_dir), "--weight_decays_shown", "[1, 3]"])
    out = capsys.readouterr().out
    for name in FIGURES:
        assert name in out
        _assert_real_figure(sweep_dir / "figures" / name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output_dir", "nowhere"], "--output_dir='nowhere' is not allowed"),
        (["--weight_decays_shown", "[7]"], "--weight_decays_shown=[7.0] is not allowed"),
    ],
)
def test_plot_errors_are_one_line(sweep_dir, capsys, args, message):
    if "--output_dir" not in args:
        args = ["--output_dir", str(sweep_dir), *args]
    with pytest.raises(SystemExit) as exited:
        main(["plot", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_read_table_keeps_only_the_asked_weight_decays_and_parses_them_alike(sweep_dir):
    whole = read_table(sweep_dir / "curves.csv")
    kept = read_table(sweep_dir / "curves.csv", weight_decays=[3, 0.0])
    assert kept == [row for row in whole if row["weight_decay"] in (0.0, 3.0)]
    assert {row["weight_decay"] for row in kept} == {0.0, 3.0}
    assert read_table(sweep_dir / "curves.csv", weight_decays=[]) == []


@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 100])
def test_at_most_eight_labelled_ticks_spread_over_the_grid(size):
    grid = [float(i) for i in range(size)]
    ticks = _spread(grid, 8)
    assert len(ticks) == min(size, 8)
    assert ticks[0] == grid[0] and ticks[-1] == grid[-1]
    assert ticks == sorted(set(ticks))
