"""Each wrong input in docs/errors.md's table gets the message it shows, and leaves nothing behind.

``CASES`` is the table: ``test_readme_table_is_the_case_list`` checks that the
page docs/errors.md ("When the input is wrong") lists exactly these rows, and the
other tests run each row. In a message, ``…`` stands for a part that varies
(a path, a temporary folder).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from tests.fits import REPO, quiet_trainer
from wd_lightning import (
    BatchMismatchError,
    CheckpointError,
    DecayRules,
    HalfMSELoss,
    InvalidArgumentError,
    LinearRegression,
    SyntheticRegressionDataModule,
    WeightDecayModule,
)
from wd_lightning.cli import main

ERRORS_PAGE = (REPO / "docs" / "errors.md").read_text()


@dataclass(frozen=True)
class Case:
    """One row of the errors page's table, and how to produce it."""

    where: str  # "CLI", "config" or "API"
    input: str  # Markdown, as the errors page shows it
    message: str  # as the errors page shows it; "…" stands for a part that varies
    outcome: str  # "exit 2", "exit 1", or the exception the API raises
    run: tuple[str, ...] | Callable[[], object]  # CLI arguments after "fit", or the API call
    subprocess: bool = False  # run as `python -m wd_lightning` rather than in-process

    @property
    def row(self) -> str:
        return f"| {self.input} | {self.where} | `` {self.message} `` | {self.outcome} |"


# ----------------------------------------------------------------------- files
CONFIGS = {
    "broken.yaml": "model:\n  init_args:\n    weight_decay: 3.0\n   penalty: loss\n",
    "typo_class.yaml": "model:\n  class_path: wd_lightning.LinearRegresion\n",
    "not_a_module.yaml": (
        "model:\n  class_path: torch.nn.Linear\n  init_args: {in_features: 200, out_features: 1}\n"
    ),
    "wrong_type.yaml": "model:\n  init_args:\n    weight_decay: [3]\n",
    "unknown_key.yaml": "model:\n  init_args:\n    weight_decy: 3.0\n",
    "narrow_model.yaml": (
        "model:\n"
        "  class_path: wd_lightning.WeightDecayModule\n"
        "  init_args:\n"
        "    model:\n"
        "      class_path: torch.nn.Linear\n"
        "      init_args: {in_features: 100, out_features: 1}\n"
    ),
}


class Opaque:
    """Stands for any object that safe loading does not rebuild."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configs and files the cases name, made once."""
    folder = tmp_path_factory.mktemp("inputs")
    for name, text in CONFIGS.items():
        (folder / name).write_text(text)
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=folder)
    trainer.strategy.connect(LinearRegression())  # the book's 200-input model
    trainer.save_checkpoint(folder / "run.ckpt")
    data = (folder / "run.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save(nn.Linear(200, 1).state_dict(), folder / "weights.pt")
    torch.save(
        {"state_dict": {}, "pytorch-lightning_version": "2.6.0", "hyper_parameters": Opaque()},
        folder / "unsafe.ckpt",
    )
    return folder


@pytest.fixture
def workspace(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding the files, as a user's would."""
    for path in files.iterdir():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------- API calls
def _fit(module: WeightDecayModule, data: SyntheticRegressionDataModule) -> None:
    quiet_trainer(max_epochs=1).fit(module, data)


def _frozen() -> nn.Module:
    net = nn.Linear(4, 1)
    net.requires_grad_(False)
    return net


CASES = [
    # ------------------------------------------------------------- values
    Case(
        "CLI",
        "`--model.weight_decay -1`",
        "--model.weight_decay=-1.0 is not allowed: expected a finite number >= 0",
        "exit 2",
        ("--model.weight_decay", "-1"),
        subprocess=True,
    ),
    Case(
        "CLI",
        "`--model.weight_decay nan`",
        "--model.weight_decay: Expected a float. Got value: nan",
        "exit 2",
        ("--model.weight_decay", "nan"),
    ),
    Case(
        "CLI",
        "`--model.weight_decay three`",
        "--model.weight_decay: Expected a float. Got value: three",
        "exit 2",
        ("--model.weight_decay", "three"),
    ),
    Case(
        "API",
        '`LinearRegression(weight_decay="3")`',
        "weight_decay='3' is not allowed: expected a finite number >= 0",
        "`InvalidArgumentError`",
        lambda: LinearRegression(weight_decay="3"),
    ),
    Case(
        "API",
        '`WeightDecayModule(net, weight_decay=float("nan"))`',
        "weight_decay=nan is not allowed: expected a finite number >= 0",
        "`InvalidArgumentError`",
        lambda: WeightDecayModule(nn.Linear(4, 1), weight_decay=float("nan")),
    ),
    Case(
        "CLI",
        "`--model.optimizer.lr 0`",
        "--model.optimizer.lr=0.0 is not allowed: expected a finite number > 0",
        "exit 2",
        ("--model.optimizer.lr", "0"),
    ),
    Case(
        "API",
        "`WeightDecayModule(net, optimizer=partial(torch.optim.SGD, lr=-1.0))`",
        "optimizer.lr=-1.0 is not allowed: expected a finite number > 0",
        "`InvalidArgumentError`",
        lambda: WeightDecayModule(
            nn.Linear(4, 1), optimizer=functools.partial(torch.optim.SGD, lr=-1.0)
        ),
    ),
    Case(
        "CLI",
        "`--model.penalty both`",
        "--model.penalty: Expected one of ['optimizer', 'loss']. Got value: both",
        "exit 2",
        ("--model.penalty", "both"),
    ),
    Case(
        "CLI",
        "`--data.batch_size 0`",
        "--data.batch_size=0 is not allowed: expected an integer >= 1",
        "exit 2",
        ("--data.batch_size", "0"),
    ),
    Case(
        "API",
        "`SyntheticRegressionDataModule(batch_size=0)`",
        "batch_size=0 is not allowed: expected an integer >= 1",
        "`InvalidArgumentError`",
        lambda: SyntheticRegressionDataModule(batch_size=0),
    ),
    Case(
        "CLI",
        "`--trainer.max_epochs -5`",
        "--trainer: `max_epochs` must be a non-negative integer or -1. You passed in -5.",
        "exit 2",
        ("--trainer.max_epochs", "-5"),
    ),
    # ------------------------------------------------------------ options
    Case(
        "CLI",
        "`--trainer.max_epoch 3` (a typo of `max_epochs`)",
        "unrecognized arguments: --trainer.max_epoch 3",
        "exit 2",
        ("--trainer.max_epoch", "3"),
        subprocess=True,
    ),
    Case(
        "CLI",
        "`--model.wd 3`",
        "--model: Option 'wd' is not accepted",
        "exit 2",
        ("--model.wd", "3"),
    ),
    Case(
        "CLI",
        "`--model.decay_rules.no_decay '[head.*]'` (no parameter is named so)",
        "--model.decay_rules.no_decay='head.*' is not allowed: expected a pattern that matches"
        " at least one trainable parameter",
        "exit 2",
        ("--model.decay_rules.no_decay", "[head.*]"),
    ),
    Case(
        "API",
        '`WeightDecayModule(net, decay_rules=DecayRules(no_decay=["head.*"]))`',
        "decay_rules.no_decay='head.*' is not allowed: expected a pattern that matches"
        " at least one trainable parameter",
        "`InvalidArgumentError`",
        lambda: WeightDecayModule(nn.Linear(4, 1), decay_rules=DecayRules(no_decay=["head.*"])),
    ),
    # ------------------------------------------------------------ configs
    Case(
        "config",
        "`--config missing.yaml` (no such file)",
        "--config: File does not exist: '…missing.yaml'",
        "exit 2",
        ("--config", "missing.yaml"),
    ),
    Case(
        "config",
        "`--config broken.yaml` (a line indented wrongly)",
        "--config: not valid YAML: did not find expected key at line 4, column 4",
        "exit 2",
        ("--config", "broken.yaml"),
    ),
    Case(
        "config",
        "`class_path: wd_lightning.LinearRegresion` (no such class)",
        "--model: module 'wd_lightning' has no attribute 'LinearRegresion'",
        "exit 2",
        ("--config", "typo_class.yaml"),
    ),
    Case(
        "config",
        "`model: {class_path: torch.nn.Linear}` (not a LightningModule)",
        "--model: Import path torch.nn.Linear does not correspond to a subclass of LightningModule",
        "exit 2",
        ("--config", "not_a_module.yaml"),
    ),
    Case(
        "config",
        "`weight_decay: [3]` (a list for a number)",
        "--model.weight_decay: Expected a float. Got value: [3]",
        "exit 2",
        ("--config", "wrong_type.yaml"),
    ),
    Case(
        "config",
        "`weight_decy: 3.0` (a misspelt key)",
        "--model: Option 'weight_decy' is not accepted",
        "exit 2",
        ("--config", "unknown_key.yaml"),
    ),
    # ---------------------------------------------------------- optimizers
    Case(
        "CLI",
        "`--model.optimizer torch.optim.Rprop` (no `weight_decay`)",
        "--model.optimizer='Rprop' is not allowed: expected an optimizer that takes"
        " weight_decay, or penalty='loss'",
        "exit 2",
        ("--model.optimizer", "torch.optim.Rprop"),
    ),
    Case(
        "API",
        "`WeightDecayModule(net, optimizer=lambda p: torch.optim.LBFGS(p)).configure_optimizers()`",
        "optimizer='<lambda>' is not allowed: expected valid arguments (LBFGS doesn't support"
        " per-parameter options (parameter groups))",
        "`InvalidArgumentError`",
        lambda: WeightDecayModule(
            nn.Linear(4, 1), optimizer=lambda p: torch.optim.LBFGS(p)
        ).configure_optimizers(),
    ),
    Case(
        "CLI",
        "`--model.optimizer.weight_decay 0.1`",
        "--model.optimizer.weight_decay=0.1 is not allowed: expected 0 or 0 (its default): set λ"
        " with the module's weight_decay, because the parameter groups override the optimizer's"
        " own value",
        "exit 2",
        ("--model.optimizer.weight_decay", "0.1"),
    ),
    Case(
        "API",
        "`WeightDecayModule(frozen_net)` (no parameter requires a gradient)",
        "model='Linear' is not allowed: expected a model with at least one trainable parameter",
        "`InvalidArgumentError`",
        lambda: WeightDecayModule(_frozen()),
    ),
    # ------------------------------------------------------------- shapes
    Case(
        "config",
        "a `torch.nn.Linear` with `in_features: 100` on the 200-input data",
        "inputs of shape (100, 200) do not fit: the model, Linear(in_features=100,"
        " out_features=1, bias=True), raised: mat1 and mat2 shapes cannot be multiplied"
        " (100x200 and 100x1)",
        "exit 2",
        ("--config", "narrow_model.yaml"),
        subprocess=True,
    ),
    Case(
        "API",
        "`trainer.fit(LinearRegression(num_inputs=50), SyntheticRegressionDataModule())`",
        "inputs of shape (100, 200) do not fit: the model, Linear(in_features=50,"
        " out_features=1, bias=True), raised: mat1 and mat2 shapes cannot be multiplied"
        " (100x200 and 50x1)",
        "`BatchMismatchError`",
        lambda: _fit(LinearRegression(num_inputs=50), SyntheticRegressionDataModule()),
    ),
    Case(
        "API",
        "float64 inputs (`torch.from_numpy`) for a float32 model",
        "inputs of shape (5, 4) do not fit: the model, Linear(in_features=4, out_features=1,"
        " bias=True), raised: mat1 and mat2 must have the same dtype, but got Double and Float;"
        " the inputs are float64",
        "`BatchMismatchError`",
        lambda: WeightDecayModule(nn.Linear(4, 1)).training_step(
            (torch.zeros(5, 4, dtype=torch.float64), torch.zeros(5, 1)), 0
        ),
    ),
    Case(
        "API",
        "targets of shape (N,) for a model predicting (N, 1)",
        "targets of shape (5,) do not fit: the model predicts shape (5, 1), and ½-MSE needs"
        " targets of the same shape (it would broadcast them to a different loss)",
        "`BatchMismatchError`",
        lambda: HalfMSELoss()(torch.zeros(5, 1), torch.zeros(5)),
    ),
    # ------------------------------------------------------------- training
    Case(
        "CLI",
        "`--model.weight_decay 1000` (η·λ = 3: SGD diverges)",
        "training diverged at step 58: the training loss is inf with learning rate 0.003 and"
        " weight_decay 1000.0 (lr·weight_decay = 3; SGD diverges once it nears 2); lower the"
        " learning rate or weight_decay",
        "exit 1",
        ("--model.weight_decay", "1000"),
    ),
    # ---------------------------------------------------------- checkpoints
    Case(
        "CLI",
        "`--ckpt_path missing.ckpt`",
        "--ckpt_path='missing.ckpt' is not allowed: expected a checkpoint file: no such file",
        "exit 2",
        ("--ckpt_path", "missing.ckpt"),
        subprocess=True,
    ),
    Case(
        "CLI",
        "`--ckpt_path truncated.ckpt` (the first half of a checkpoint)",
        "--ckpt_path='truncated.ckpt' is not allowed: expected a complete checkpoint file: this"
        " one ends early or is damaged (its zip archive has no central directory); was it copied"
        " or written completely?",
        "exit 2",
        ("--ckpt_path", "truncated.ckpt"),
    ),
    Case(
        "CLI",
        "`--ckpt_path notes.txt` (a text file)",
        "--ckpt_path='notes.txt' is not allowed: expected a checkpoint written by torch.save;"
        " this file is not one",
        "exit 2",
        ("--ckpt_path", "notes.txt"),
        subprocess=True,
    ),
    Case(
        "CLI",
        "`--ckpt_path tensor.pt` (`torch.save(tensor)`)",
        "--ckpt_path='tensor.pt' is not allowed: expected a Lightning checkpoint (a dict with"
        " 'state_dict' and 'pytorch-lightning_version'); this file holds a Tensor",
        "exit 2",
        ("--ckpt_path", "tensor.pt"),
    ),
    Case(
        "CLI",
        "`--ckpt_path run.ckpt --data.num_inputs 50` (a checkpoint of the 200-input model)",
        "--ckpt_path='run.ckpt' is not allowed: expected a checkpoint of this model: model.weight"
        " has shape [1, 200] in the checkpoint and [1, 50] in the model",
        "exit 2",
        ("--ckpt_path", "run.ckpt", "--data.num_inputs", "50"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("missing.ckpt")`',
        "checkpoint_path='missing.ckpt' is not allowed: expected a checkpoint file: no such file",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("missing.ckpt"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("truncated.ckpt")`',
        "checkpoint_path='truncated.ckpt' is not allowed: expected a complete checkpoint file:"
        " this one ends early or is damaged …",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("truncated.ckpt"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("notes.txt")`',
        "checkpoint_path='notes.txt' is not allowed: expected a checkpoint written by"
        " torch.save; this file is not one",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("notes.txt"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("weights.pt")` (`torch.save(net.state_dict())`)',
        "checkpoint_path='weights.pt' is not allowed: expected a Lightning checkpoint (a dict"
        " with 'state_dict' and 'pytorch-lightning_version'); this file holds a dict with keys"
        " 'weight', 'bias' (a bare state_dict: load it with"
        " model.load_state_dict(torch.load(path)))",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("weights.pt"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("unsafe.ckpt")` (holds a pickled class)',
        "checkpoint_path='unsafe.ckpt' is not allowed: expected a checkpoint that loads with"
        " weights_only=True: it holds …Opaque, which safe loading refuses; load it with"
        " weights_only=False only if you trust the file",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("unsafe.ckpt"),
    ),
    Case(
        "API",
        '`LinearRegression.load_from_checkpoint("run.ckpt", num_inputs=50)`',
        "checkpoint_path='run.ckpt' is not allowed: expected a checkpoint of this model: size"
        " mismatch for model.weight: copying a param with shape torch.Size([1, 200]) from"
        " checkpoint, the shape in current model is torch.Size([1, 50]).",
        "`CheckpointError`",
        lambda: LinearRegression.load_from_checkpoint("run.ckpt", num_inputs=50),
    ),
]

CLI_CASES = [case for case in CASES if isinstance(case.run, tuple)]
API_CASES = [case for case in CASES if not isinstance(case.run, tuple)]
EXCEPTIONS = {
    "InvalidArgumentError": InvalidArgumentError,
    "BatchMismatchError": BatchMismatchError,
    "CheckpointError": CheckpointError,
}
QUIET = ("--trainer.enable_progress_bar", "false")


def _ids(case: Case) -> str:
    return re.sub(r"[^\w.=-]+", "_", case.input.strip("`"))[:60]


def _assert_shows(message: str, text: str) -> None:
    """``message``'s parts between "…" occur in ``text``, in order."""
    position = 0
    for part in message.split("…"):
        found = text.find(part, position)
        assert found >= 0, f"expected {part!r} in {text!r}"
        position = found + len(part)


# ----------------------------------------------------------------------- tests
def test_readme_table_is_the_case_list():
    rows = [line for line in ERRORS_PAGE.splitlines() if line.startswith("| ")][1:]  # no header
    expected = [case.row for case in CASES]
    assert rows == expected, "docs/errors.md's table should read:\n" + "\n".join(expected)


def test_the_table_covers_every_kind_of_input():
    assert len(CASES) >= 15
    assert {case.where for case in CASES} == {"CLI", "config", "API"}
    assert any(case.subprocess for case in CASES)


@pytest.mark.parametrize(
    "case",
    # A subprocess, or a fit that trains until it diverges.
    [
        pytest.param(case, marks=pytest.mark.slow)
        if case.subprocess or case.outcome == "exit 1"
        else case
        for case in CLI_CASES
    ],
    ids=_ids,
)
def test_cli_gets_one_line_and_an_exit_code(case, workspace, capsys):
    args = ["fit", *QUIET, *case.run]
    if case.subprocess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        result = subprocess.run(
            [sys.executable, "-m", "wd_lightning", *args],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        code, err = result.returncode, result.stderr
    else:
        with pytest.raises(SystemExit) as exited:
            main(args)
        code, err = exited.value.code, capsys.readouterr().err
    assert code == int(case.outcome.removeprefix("exit ")), err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("wd-lightning: error: ")]
    assert len(errors) == 1, err
    _assert_shows(case.message, errors[0].removeprefix("wd-lightning: error: "))
    if case.outcome == "exit 1":
        # It trained until it diverged: that run's logs stay, but no checkpoint of
        # its non-finite weights is written.
        run = workspace / "lightning_logs" / "version_0"
        assert list(run.glob("events.out.tfevents.*")) and not list(run.rglob("*.ckpt"))
    else:
        # Nothing was trained: no run directory for TensorBoard to list or a resume to pick.
        assert not (workspace / "lightning_logs").exists()


@pytest.mark.parametrize("case", API_CASES, ids=_ids)
def test_api_raises_the_documented_exception(case, workspace):
    expected = EXCEPTIONS[case.outcome.strip("`")]
    with pytest.raises(expected) as raised:
        case.run()
    assert type(raised.value) is expected
    _assert_shows(case.message, str(raised.value))
    assert "\n" not in str(raised.value)
    assert not (workspace / "lightning_logs").exists()
