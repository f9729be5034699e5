import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelSummary

from tests.fits import CONFIGS, REPO
from wd_lightning import LinearRegression, SyntheticRegressionDataModule
from wd_lightning.cli import LEAD_OPTIONS, WeightDecayCLI, condense_parser_error, main
from wd_lightning.training.tensorboard import read_scalars

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _parse(*args: str) -> WeightDecayCLI:
    """Parse and instantiate without running, as ``fit`` would."""
    return WeightDecayCLI(args=list(args), run=False)


def test_no_arguments_is_the_articles_lambda_3_run():
    cli = _parse()
    assert isinstance(cli.model, LinearRegression) and cli.model.weight_decay == 3.0
    assert isinstance(cli.datamodule, SyntheticRegressionDataModule)
    assert (cli.datamodule.num_train, cli.datamodule.num_inputs) == (20, 200)
    assert cli.trainer.max_epochs == 100
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.003


def test_num_inputs_is_linked_from_the_data():
    cli = _parse("--data.num_inputs", "37")
    assert cli.datamodule.num_inputs == 37
    assert cli.model.model.weight.shape == (1, 37)


def test_optimizer_is_chosen_in_the_config_and_the_groups_stay():
    cli = _parse("--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr", "0.01")
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("decay", 3.0),
        ("no_decay", 0.0),
    ]


def test_there_is_no_top_level_optimizer_that_would_replace_the_groups(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--optimizer", "torch.optim.Adam"])
    assert exited.value.code == 2
    assert "--optimizer" in capsys.readouterr().err


def test_fit_with_no_arguments_writes_tensorboard_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--trainer.max_epochs", "2", *QUIET])
    run = tmp_path / "lightning_logs" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").exists()
    out = capsys.readouterr().out
    assert "fit finished after 8 optimizer steps" in out and "weight_norm/decay" in out


def test_validate_and_test_score_a_trained_checkpoint_on_their_own_data(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path), *QUIET]
    fitted = WeightDecayCLI(args=["fit", "--trainer.max_epochs", "5", *root])
    checkpoint = ["--ckpt_path", f"{fitted.trainer.log_dir}/checkpoints/last.ckpt"]
    val = WeightDecayCLI(args=["validate", *checkpoint, *root]).trainer.callback_metrics
    test = WeightDecayCLI(args=["test", *checkpoint, *root]).trainer.callback_metrics
    # The held-out set, scored again from the checkpoint: what the fit logged last.
    assert val["val/loss"].item() == pytest.approx(fitted.trainer.callback_metrics["val/loss"])
    # The test set is other examples than the held-out set.
    assert test["test/loss"].item() != pytest.approx(val["val/loss"].item())


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluating_untrained_weights_is_refused(tmp_path, monkeypatch, capsys, subcommand):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main([subcommand])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ckpt_path" in err and "untrained" in err
    assert not (tmp_path / "lightning_logs").exists()


def test_predict_is_not_offered(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["predict"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'predict'" in err


def test_bare_command_prints_an_overview(capsys):
    main([])
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "sweep", "plot"):
        assert f"\n  {name} " in out
    for config in ("d2l_no_decay", "d2l_weight_decay", "sweep", "ucurve", "mlp_classifier"):
        assert f"\n  {config} " in out
    assert "fit --config d2l_weight_decay" in out


def test_help_leads_with_this_packages_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    usage, _, rest = out.partition("\n")
    assert usage == "usage: wd-lightning fit [--config NAME_OR_FILE] [options]"
    lead = rest[: rest.index("--trainer.accelerator")]
    for option, _, _ in LEAD_OPTIONS:
        assert f"  {option} " in lead, option
    assert rest.splitlines()[1] == "Train a model; with no options, the article's λ = 3 run."


@pytest.mark.parametrize(("option", "value"), [(o, v) for o, v, _ in LEAD_OPTIONS])
def test_every_option_the_help_leads_with_is_accepted(option, value):
    args = [option, value]
    if option.startswith("--model.optimizer."):
        args = ["--model.optimizer", "torch.optim.SGD", *args]
    _parse(*args)


def test_usage_names_the_module_when_run_with_python_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "wd_lightning", "fit", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.startswith("usage: python -m wd_lightning fit ")


def test_a_shipped_config_is_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a clone: no configs/ folder here
    assert _parse("--config", "d2l_no_decay").model.weight_decay == 0.0
    assert _parse("--config=d2l_weight_decay").model.weight_decay == 3.0


BAD_INPUTS = [
    (["--model.weight_decay", "-1"], "--model.weight_decay=-1.0", "finite number >= 0"),
    (["--model.weight_decay", "inf"], "--model.weight_decay", ""),
    (["--model.weight_decay", "abc"], "--model.weight_decay", "float"),
    (["--model.optimizer.lr", "0"], "--model.optimizer.lr=0.0", "finite number > 0"),
    (["--model.optimizer.lr", "-0.1"], "--model.optimizer.lr=-0.1", "finite number > 0"),
    (["--model.optimizer.weight_decay", "0.1"], "--model.optimizer.weight_decay", "module's"),
    (["--model.penalty", "both"], "--model.penalty", "'optimizer', 'loss'"),
    (["--data.batch_size", "0"], "--data.batch_size=0", "integer >= 1"),
    (["--data.num_train", "0"], "--data.num_train=0", "integer >= 1"),
    (["--data.num_val", "-5"], "--data.num_val=-5", "integer >= 1"),
    (["--data.noise", "-0.5"], "--data.noise=-0.5", "finite number >= 0"),
    (["--model.wd", "3"], "--model", "'wd' is not accepted"),
    (["--data.batchsize", "3"], "--data", "'batchsize' is not accepted"),
    (["--config", "missing.yaml"], "--config", "does not exist"),
    (["--config", "d2l_weightdecay"], "--config='d2l_weightdecay'", "d2l_weight_decay"),
    (["--trainer.max_epoch", "3"], "", "--trainer.max_epoch"),
]


@pytest.mark.parametrize(("args", "option", "allowed"), BAD_INPUTS)
def test_bad_input_gets_one_line_naming_the_option(
    tmp_path, monkeypatch, capsys, args, option, allowed
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["fit", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert err.splitlines() == errors and len(errors) == 1, err
    assert option in errors[0] and allowed in errors[0], errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  init_args:\n    weight_decy: 3.0\n")
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config)])
    assert exited.value.code == 2
    assert "weight_decy" in capsys.readouterr().err


def test_divergence_exits_with_a_message_naming_lr_and_lambda(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fit",
                "--model.weight_decay",
                "1000",
                "--trainer.default_root_dir",
                str(tmp_path),
                *QUIET,
            ]
        )
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "learning rate 0.003" in err and "1000" in err
    # The diverged weights are not saved over the last good checkpoint.
    assert not list(tmp_path.rglob("*.ckpt"))


def test_condense_keeps_plain_messages():
    assert condense_parser_error("unrecognized arguments: --x 1") == "unrecognized arguments: --x 1"
    assert condense_parser_error('Parser key "config": File does not exist: a.yaml') == (
        "--config: File does not exist: a.yaml"
    )


@pytest.mark.slow
def test_end_to_end_subprocess_writes_the_expected_scalars(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "wd_lightning", "fit"]
    command += [
        "--config",
        str(CONFIGS / "d2l_weight_decay.yaml"),
        "--trainer.max_epochs",
        "10",
        *QUIET,
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "fit finished after 40 optimizer steps" in result.stdout
    scalars = read_scalars(tmp_path / "lightning_logs" / "version_0")
    for tag in (
        "train/loss",
        "val/loss",
        "val/mse",
        "weight_norm/decay",
        "weight_norm/no_decay",
        "weight_norm/total",
    ):
        assert tag in scalars, tag
    assert [step for step, _ in scalars["train/loss"]] == list(range(3, 40, 4))
    assert scalars["weight_norm/decay"][-1][0] == 40
    # λ = 3 shrinks ‖w‖ from ≈ 14 by about 0.991 per step: ≈ 0.7× after 40 steps.
    first, last = scalars["weight_norm/decay"][0][1], scalars["weight_norm/decay"][-1][1]
    assert first > 12 and 0.6 < last / first < 0.8
    # val/mse is twice the ½-MSE val/loss.
    for (_, loss), (_, mse) in zip(scalars["val/loss"], scalars["val/mse"], strict=True):
        assert mse == pytest.approx(2 * loss, rel=1e-5)


@pytest.mark.slow
def test_console_script_is_the_same_program(tmp_path):
    # Installed next to the interpreter (a virtual environment's bin/), or on PATH.
    beside = Path(sys.executable).with_name("wd-lightning")
    script = str(beside) if beside.exists() else shutil.which("wd-lightning")
    assert script, "the package's console script is not installed"
    result = subprocess.run(
        [script, "fit", "--print_config"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "wd_lightning.LinearRegression" in result.stdout and "weight_decay: 3.0" in result.stdout


def test_any_model_through_the_cli(tmp_path):
    config = tmp_path / "generic.yaml"
    config.write_text(
        "model:\n"
        "  class_path: wd_lightning.WeightDecayModule\n"
        "  init_args:\n"
        "    weight_decay: 0.1\n"
        "    model:\n"
        "      class_path: torch.nn.Linear\n"
        "      init_args: {in_features: 200, out_features: 1}\n"
    )
    args = ["fit", "--config", str(config), "--trainer.max_epochs", "2"]
    cli = WeightDecayCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert type(cli.model.model) is torch.nn.Linear
    assert cli.trainer.global_step == 8
    groups = cli.trainer.optimizers[0].param_groups
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 0.1), ("no_decay", 0.0)]


def test_default_checkpoint_is_last_ckpt_and_resumes(tmp_path):
    args = ["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "3"]
    cli = WeightDecayCLI(args=[*args, *QUIET])
    checkpoints = cli.trainer.log_dir + "/checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["last.ckpt"]  # one save for a short run
    resumed = ["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "5"]
    resumed += ["--ckpt_path", checkpoints + "/last.ckpt"]
    assert WeightDecayCLI(args=[*resumed, *QUIET]).trainer.global_step == 20


def test_own_checkpoint_callback_or_none_replaces_the_default(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def checkpoint_callbacks(*extra):
        args = ["--trainer.default_root_dir", str(tmp_path), *extra]
        cli = WeightDecayCLI(args=args, run=False)
        return [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]

    (default,) = checkpoint_callbacks()
    assert default.save_last and default.save_on_exception
    own = ["--trainer.callbacks", "ModelCheckpoint", "--trainer.callbacks.every_n_epochs", "7"]
    (given,) = checkpoint_callbacks(*own)
    assert given._every_n_epochs == 7
    assert checkpoint_callbacks("--trainer.enable_checkpointing", "false") == []


def test_model_summary_is_off_by_default_and_can_be_turned_on():
    # RichModelSummary, a subclass, when rich is installed (import-linter brings it).

    assert not any(isinstance(c, ModelSummary) for c in _parse().trainer.callbacks)
    on = _parse("--trainer.enable_model_summary", "true")
    assert any(isinstance(c, ModelSummary) for c in on.trainer.callbacks)


@pytest.mark.slow
def test_sigterm_is_reported_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    command = [sys.executable, "-m", "wd_lightning", "fit", "--trainer.max_epochs", "3", *QUIET]
    command += ["--trainer.callbacks", "tests.fits.SignalAt", "--trainer.callbacks.step", "6"]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 143
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    *start_up, last = result.stderr.splitlines()
    assert last == (
        f"wd-lightning: fit interrupted by SIGTERM at step 6; resume with --ckpt_path {checkpoint}"
    )
    # Lightning's start-up lines stay; its own lines about the interrupt do not.
    assert not [line for line in start_up if "SIGTERM" in line or "checkpoint" in line]


def test_runs_without_a_logger_leave_the_working_directory_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second run used to stop on the first one's config.yaml
        main(["fit", "--trainer.max_epochs", "1", "--trainer.logger", "false", *QUIET])
    assert not (tmp_path / "config.yaml").exists()
    assert "logs:" not in capsys.readouterr().out
