"""``sweep``: a vectorised grid whose every member is the fit it stands for."""

import csv
import math
import re

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins import MixedPrecision

from tests.fits import CONFIGS
from wd_lightning.cli import main
from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.sweep.ensemble import check_sweep_trainer
from wd_lightning.sweep.plots import read_table
from wd_lightning.sweep.run import SUMMARY_COLUMNS, format_table, sweep_members
from wd_lightning.training.tensorboard import read_scalars

QUIET = ["--trainer.enable_progress_bar", "false"]
CLIP_VALUE = ["--trainer.gradient_clip_val", "0.01", "--trainer.gradient_clip_algorithm", "value"]
COMPARED_TAGS = ("train/loss", "val/loss", "weight_norm/decay", "weight_norm/no_decay")


def _sweep(tmp_path, weight_decays, seeds, *extra, name="sweep"):
    output_dir = tmp_path / name
    main(
        [
            "sweep",
            "--weight_decays", str(list(weight_decays)),
            "--seeds", str(list(seeds)),
            "--output_dir", str(output_dir),
            "--plot", "false",
            *QUIET,
            *extra,
        ]
    )  # fmt: skip
    return output_dir


def _fit(tmp_path, weight_decay, seed, *extra):
    root = tmp_path / f"fit_wd{weight_decay}_seed{seed}"
    main(
        [
            "fit",
            "--model.weight_decay", str(weight_decay),
            "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(root),
            "--trainer.enable_checkpointing", "false",
            *QUIET,
            *extra,
        ]
    )  # fmt: skip
    return read_scalars(root / "lightning_logs" / "version_0")


def _row(output_dir, weight_decay, seed):
    rows = read_table(output_dir / "summary.csv")
    return next(r for r in rows if r["weight_decay"] == weight_decay and r["seed"] == seed)


def _close(ours: float, theirs: float) -> bool:
    # Float32 rounding: ~1e-7 relative in the weights (measured), while a
    # residual xᵀw + b − y with ‖w‖ ≈ 14 carries ~1e-6 of absolute rounding, so
    # small losses get an absolute allowance of that size.
    return math.isclose(ours, theirs, rel_tol=2e-5, abs_tol=1e-6)


def _assert_member_equals_fit(output_dir, weight_decay, seed, fit_scalars):
    run = read_scalars(output_dir / "runs" / f"wd={weight_decay:g}_seed={seed}")
    # The fit's own validation metrics too (val/mse, val/accuracy, ...).
    metrics = sorted(tag for tag in fit_scalars if tag.startswith("val/") and tag != "val/loss")
    assert metrics
    for tag in [*COMPARED_TAGS, *metrics]:
        steps = [step for step, _ in fit_scalars[tag]]
        assert [step for step, _ in run[tag]] == steps, tag
        for (_, ours), (_, theirs) in zip(run[tag], fit_scalars[tag], strict=True):
            assert _close(ours, theirs), (tag, ours, theirs)
    row = _row(output_dir, weight_decay, seed)
    assert row["status"] == "ok"
    for column, tag in [
        ("train_loss", "train/loss"),
        ("val_loss", "val/loss"),
        ("weight_norm", "weight_norm/decay"),
        ("total_weight_norm", "weight_norm/total"),
    ]:
        assert _close(row[column], fit_scalars[tag][-1][1]), column


@pytest.mark.slow
def test_every_member_equals_a_separate_fit_of_the_book(tmp_path):
    output_dir = _sweep(tmp_path, [0, 3], [0, 1])
    for weight_decay, seed in [(3, 1), (0, 0)]:
        fit = _fit(tmp_path, weight_decay, seed)
        _assert_member_equals_fit(output_dir, weight_decay, seed, fit)
    # The comparison can tell members apart: λ = 3 with seed 0 is not the seed-1 fit.
    norms = [_row(output_dir, 3, seed)["weight_norm"] for seed in (0, 1)]
    assert not math.isclose(*norms, rel_tol=1e-3)
    assert _row(output_dir, 3, 1)["steps"] == 400


@pytest.mark.parametrize(
    "options",
    [
        ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.01"],
        ["--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr", "0.01"],
        ["--model.penalty", "loss", "--model.optimizer.momentum", "0.9"],
    ],
    ids=["adamw-decoupled", "adam-coupled", "sgd-momentum-penalty-in-loss"],
)
def test_members_equal_fits_with_other_optimizers(tmp_path, options):
    epochs = ["--trainer.max_epochs", "10"]
    output_dir = _sweep(tmp_path, [0.5, 3], [2], *epochs, *options)
    _assert_member_equals_fit(output_dir, 3, 2, _fit(tmp_path, 3, 2, *epochs, *options))


@pytest.mark.parametrize(
    "options",
    [
        # Clipping must not see λ·w with the decay in the optimizer, and must with it in the loss.
        CLIP_VALUE,
        [*CLIP_VALUE, "--model.penalty", "loss"],
        # Decay once per optimizer step, not per batch.
        ["--trainer.accumulate_grad_batches", "2", "--model.optimizer.momentum", "0.9"],
        ["--trainer.accumulate_grad_batches", "2", "--model.penalty", "loss"],
        ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.01", *CLIP_VALUE],
    ],
    ids=[
        "clip-value",
        "clip-value-penalty-in-loss",
        "accumulate",
        "accumulate-penalty-in-loss",
        "adamw-clip-value",
    ],
)
def test_members_equal_fits_under_trainer_options(tmp_path, options):
    epochs = ["--trainer.max_epochs", "10"]
    output_dir = _sweep(tmp_path, [0.5, 3], [2], *epochs, *options)
    _assert_member_equals_fit(output_dir, 3, 2, _fit(tmp_path, 3, 2, *epochs, *options))


@pytest.mark.slow
def test_any_model_through_vmap_equals_its_fit(tmp_path):
    # An MLP with BatchNorm (running statistics, eval mode in validation) and
    # cross-entropy: the general path, not the batched-matmul one. SGD rather
    # than the config's AdamW: the biases in front of BatchNorm have a gradient
    # of pure rounding noise, which Adam's normalisation turns into steps of size lr.
    options = ["--config", str(CONFIGS / "mlp_classifier.yaml"), "--trainer.max_epochs", "2"]
    options += ["--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.05"]
    options += ["--model.optimizer.momentum", "0.9"]
    output_dir = _sweep(tmp_path, [0.05, 0.5], [0], *options)
    _assert_member_equals_fit(output_dir, 0.05, 0, _fit(tmp_path, 0.05, 0, *options))


def test_a_diverging_member_is_marked_and_the_others_finish(tmp_path, capsys):
    output_dir = _sweep(tmp_path, [3, 1000], [0], "--trainer.max_epochs", "20")
    diverged, fine = _row(output_dir, 1000, 0), _row(output_dir, 3, 0)
    assert diverged["status"] == "diverged" and math.isnan(diverged["val_loss"])
    assert fine["status"] == "ok" and fine["steps"] == 80 and math.isfinite(fine["val_loss"])
    alone = _row(_sweep(tmp_path, [3], [0], "--trainer.max_epochs", "20", name="alone"), 3, 0)
    assert math.isclose(fine["weight_norm"], alone["weight_norm"], rel_tol=1e-6)
    assert "diverged" in capsys.readouterr().out
    # A fit of the diverging λ stops at the very step the sweep recorded.
    with pytest.raises(SystemExit) as exited:
        _fit(tmp_path, 1000, 0, "--trainer.max_epochs", "20")
    assert exited.value.code == 1
    step = re.search(r"diverged at step (\d+)", capsys.readouterr().err)
    assert step and int(step.group(1)) == diverged["diverged_at_step"]


def test_outputs_one_run_per_member_and_the_tables(tmp_path, capsys):
    output_dir = _sweep(tmp_path, [0, 3], [0, 1], "--trainer.max_epochs", "3")
    assert sorted(p.name for p in (output_dir / "runs").iterdir()) == [
        "wd=0_seed=0",
        "wd=0_seed=1",
        "wd=3_seed=0",
        "wd=3_seed=1",
    ]
    with (output_dir / "summary.csv").open() as handle:
        header = next(csv.reader(handle))
    # LinearRegression validates with torchmetrics' MSE: one column per validation metric.
    assert tuple(header) == (*SUMMARY_COLUMNS, "val_mse")
    rows = read_table(output_dir / "summary.csv")
    assert [(r["weight_decay"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (3, 0), (3, 1)]
    assert all(r["ridge_weight_norm"] > 0 and r["distance_to_ridge"] > 0 for r in rows)
    assert all(math.isclose(r["val_mse"], 2 * r["val_loss"], rel_tol=1e-5) for r in rows)
    # The decay timescale of SGD at lr 0.003: τ = 1/(ηλ), and (1 − ηλ)^T left of w₀.
    assert [r["timescale_steps"] for r in rows[:2]] == [math.inf, math.inf]
    assert math.isclose(rows[2]["timescale_steps"], 1 / 0.009, rel_tol=1e-12)
    assert math.isclose(rows[2]["init_remaining"], 0.991 ** rows[2]["steps"], rel_tol=1e-12)
    curves = read_table(output_dir / "curves.csv")
    assert len(curves) == 4 * 3 and {c["epoch"] for c in curves} == {0, 1, 2}
    assert (output_dir / "ridge_curve.csv").exists() and (output_dir / "config.yaml").exists()
    out = capsys.readouterr().out
    assert "‖w*‖" in out and "summary.csv" in out
    scalars = read_scalars(output_dir / "runs" / "wd=3_seed=1")
    assert "val/mse" in scalars
    remaining = scalars["weight_decay/init_remaining/decay"][-1][1]
    assert remaining == pytest.approx(rows[3]["init_remaining"])


def _hparams_and_text(run_dir):
    """A run's HParams entry (hyper-parameters, metric tags, session status) and Text tab."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(run_dir), size_guidance={TENSORS: 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    params = {
        name: value.number_value if value.HasField("number_value") else value.string_value
        for name, value in start.hparams.items()
    }
    text = events.Tensors("param_groups/text_summary")[0].tensor_proto.string_val[0].decode()
    metrics = sorted(info.name.tag for info in experiment.metric_infos)
    return params, metrics, end.status, text


def test_a_members_hparams_and_text_equal_its_fits_and_diverged_members_are_listed(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    epochs = ["--trainer.max_epochs", "20"]
    output_dir = _sweep(tmp_path, [3, 1000], [1], *epochs)
    _fit(tmp_path, 3, 1, *epochs)
    fit = _hparams_and_text(tmp_path / "fit_wd3_seed1" / "lightning_logs" / "version_0")
    member = _hparams_and_text(output_dir / "runs" / "wd=3_seed=1")
    assert member == fit
    params, metrics, status, _ = member
    assert params["seed"] == 1 and params["lr"] == 0.003 and params["optimizer"] == "SGD"
    assert metrics == ["train/loss", "val/loss", "val/mse", "weight_norm/total"]
    assert status == api_pb2.STATUS_SUCCESS
    params, _, status, _ = _hparams_and_text(output_dir / "runs" / "wd=1000_seed=1")
    assert params["status"] == "diverged" and status == api_pb2.STATUS_FAILURE


def test_the_sweep_reports_the_null_space_prediction(tmp_path):
    output_dir = _sweep(tmp_path, [3], [0], "--trainer.max_epochs", "10")
    row = _row(output_dir, 3, 0)
    assert math.isclose(row["null_space_norm"], row["predicted_null_space_norm"], rel_tol=1e-5)
    norm = math.hypot(row["null_space_norm"], row["row_space_norm"])
    assert math.isclose(norm, row["weight_norm"], rel_tol=1e-5)


def test_an_earlier_sweep_is_not_overwritten_unless_asked(tmp_path, capsys):
    _sweep(tmp_path, [3], [0], "--trainer.max_epochs", "1")
    with pytest.raises(SystemExit) as exited:
        _sweep(tmp_path, [3], [0], "--trainer.max_epochs", "1")
    assert exited.value.code == 2
    assert "--output_dir" in capsys.readouterr().err
    output_dir = _sweep(tmp_path, [2], [0], "--trainer.max_epochs", "1", "--overwrite", "true")
    assert [p.name for p in (output_dir / "runs").iterdir()] == ["wd=2_seed=0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weight_decays", "[-1]"], "--weight_decays=-1.0 is not allowed"),
        (["--weight_decays", "[]"], "--weight_decays=[] is not allowed"),
        (["--weight_decays", "[3, 3]"], "distinct values"),
        (["--seeds", "[-2]"], "--seeds=-2 is not allowed"),
        (["--weight_decays", "[abc]"], "--weight_decays"),
        (
            ["--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"],
            "--trainer.strategy",
        ),
        (["--trainer.gradient_clip_val", "1.0"], "--trainer.gradient_clip_algorithm"),
        (
            ["--trainer.callbacks", "EarlyStopping", "--trainer.callbacks.monitor", "val/loss"],
            "--trainer.callbacks='EarlyStopping' is not allowed",
        ),
        (
            [
                "--trainer.callbacks",
                "StochasticWeightAveraging",
                "--trainer.callbacks.swa_lrs=0.01",
            ],
            "--trainer.callbacks='StochasticWeightAveraging' is not allowed",
        ),
        (
            ["--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"],
            "--model.lr_scheduler='ReduceLROnPlateau' is not allowed",
        ),
    ],
)
def test_bad_sweep_options_get_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--plot", "false", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "sweep_logs" / "runs").exists()


def test_sweep_members_are_lambda_major_and_checked():
    members = sweep_members([0, 3], [1, 2])
    assert [(m.weight_decay, m.seed) for m in members] == [(0, 1), (0, 2), (3, 1), (3, 2)]
    with pytest.raises(InvalidArgumentError, match="seeds"):
        sweep_members([1.0], [True])
    with pytest.raises(InvalidArgumentError, match="weight_decays"):
        sweep_members([float("nan")], [0])


def test_a_gradient_scaler_is_refused_in_a_sweep():
    # On CPU Lightning turns precision="16-mixed" into bf16; a scaler can still be given.
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = Trainer(accelerator="cpu", plugins=[scaler], logger=False)
    with pytest.raises(InvalidArgumentError, match=r"trainer\.precision"):
        check_sweep_trainer(trainer)


def test_a_large_sweep_prints_one_line_per_weight_decay():
    rows = [
        {
            "weight_decay": wd,
            "seed": seed,
            "status": "ok",
            "val_loss": float(seed),
            "weight_norm": 2.0,
        }
        for wd in (0.0, 3.0)
        for seed in range(60)
    ]
    rows[-1] = {"weight_decay": 3.0, "seed": 59, "status": "diverged", "val_loss": float("nan")}
    lines = format_table(rows).splitlines()
    assert len(lines) == 4  # header, one line per λ, the note
    assert lines[1].split()[:5] == ["0", "60", "60/60", "-", "29.5"]
    assert lines[2].split()[:5] == ["3", "60", "59/60", "-", "29"]  # the diverged seed left out
    assert "summary.csv" in lines[3]
    assert len(format_table(rows[:100]).splitlines()) == 101  # small enough: every run
