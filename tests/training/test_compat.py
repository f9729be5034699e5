"""One test per assumption that ``wd_lightning.training.compat`` makes about private APIs.

If an upgrade of Lightning or jsonargparse breaks one, the failing test names
the assumption; fix it in ``compat.py`` and nowhere else.
"""

import inspect
import warnings
from typing import ClassVar

import pytest
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.tuner import Tuner
from torch import nn

from tests.fits import quiet_trainer
from wd_lightning import LinearRegression, SyntheticRegressionDataModule, WeightDecayModule
from wd_lightning.training import compat
from wd_lightning.training.cadence import logs_this_step


class _Recorder(Logger):
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.hparams: list[dict] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        if "train/loss" in metrics:
            self.steps.append(step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hparams.append(dict(params))


class _Cadence(Callback):
    """Records, per batch, the counter compat reads and both logging rules."""

    def __init__(self) -> None:
        self.counted: list[int] = []
        self.ours: list[bool] = []
        self.lightnings: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ours.append(logs_this_step(trainer))
        self.lightnings.append(trainer._logger_connector.should_update_logs)
        if self.ours[-1]:
            self.counted.append(compat.batches_that_stepped(trainer))


def _fit_with_cadence(**trainer_kwargs):
    recorder, cadence = _Recorder(), _Cadence()
    trainer = quiet_trainer(logger=recorder, callbacks=[cadence], **trainer_kwargs)
    trainer.fit(LinearRegression(weight_decay=3.0), SyntheticRegressionDataModule())
    return recorder, cadence


def test_batches_that_stepped_is_the_step_lightning_writes_metrics_at():
    recorder, cadence = _fit_with_cadence(max_epochs=3, log_every_n_steps=3)
    assert recorder.steps and recorder.steps == cadence.counted


def test_logs_this_step_is_lightnings_own_rule_under_accumulation():
    _, cadence = _fit_with_cadence(max_epochs=4, log_every_n_steps=3, accumulate_grad_batches=2)
    assert any(cadence.ours) and cadence.ours == cadence.lightnings


def test_restricted_classmethod_is_lightnings_guard(tmp_path):
    assert compat.restricted_classmethod is not classmethod
    trainer = quiet_trainer(max_steps=0, default_root_dir=tmp_path)
    trainer.strategy.connect(WeightDecayModule(nn.Linear(3, 1)))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loaded = WeightDecayModule.load_from_checkpoint(tmp_path / "run.ckpt", model=nn.Linear(3, 1))
    with pytest.raises(TypeError, match="instance"):
        loaded.load_from_checkpoint(tmp_path / "run.ckpt", model=nn.Linear(3, 1))


def test_initial_hparams_are_what_loggers_receive():
    module = LinearRegression(weight_decay=3.0)
    compat.initial_hparams(module)["marker"] = 7
    recorder = _Recorder()
    quiet_trainer(max_steps=1, logger=recorder).fit(module, SyntheticRegressionDataModule())
    assert recorder.hparams[0]["marker"] == 7


def test_jsonargparse_deprecations_are_of_the_class_compat_silences():
    from jsonargparse._deprecated import JsonargparseDeprecationWarning

    assert issubclass(JsonargparseDeprecationWarning, DeprecationWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.ignore_jsonargparse_deprecations()
        warnings.warn("old", JsonargparseDeprecationWarning, stacklevel=1)
    assert caught == []


@pytest.mark.parametrize(
    ("hook", "parameters"),
    [
        ("_add_subcommands", ["self", "parser", "kwargs"]),
        ("_run_subcommand", ["self", "subcommand"]),
    ],
)
def test_lightning_cli_has_the_subcommand_hooks_the_cli_overrides(hook, parameters):
    assert hook in compat.CLI_SUBCOMMAND_HOOKS
    assert list(inspect.signature(getattr(LightningCLI, hook)).parameters) == parameters


class _HelloCLI(LightningCLI):
    """A LightningCLI with one extra subcommand, added the way the package's CLI adds ``sweep``."""

    ran: ClassVar[list[str]] = []

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        hello = self.init_parser(description="hello")
        compat.build_cli_arguments(self, hello)
        hello.add_argument("--greeting", type=str, default="hi")
        compat.add_cli_subcommand(self, parser, "hello", hello, help="say hello")

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "hello":
            super()._run_subcommand(subcommand)
            return
        greeting = self.config["hello"]["greeting"]
        parser = compat.subcommand_parser(self, "hello")
        self.ran.append(f"{greeting} {type(self.model).__name__} {type(parser).__name__}")


def test_a_subcommand_added_through_compat_parses_builds_and_runs():
    _HelloCLI(
        LinearRegression,
        LightningDataModule,
        subclass_mode_data=True,
        args=["hello", "--greeting", "hey", "--data", "wd_lightning.SyntheticRegressionDataModule"],
        trainer_defaults={"logger": False, "enable_progress_bar": False},
    )
    assert _HelloCLI.ran == ["hey LinearRegression LightningArgumentParser"]


def test_a_learning_rate_search_is_recognised_while_it_runs(tmp_path):
    seen = []

    class _Probe(LinearRegression):
        def training_step(self, batch, batch_idx):
            seen.append(compat.searching_learning_rate(self.trainer))
            return super().training_step(batch, batch_idx)

    module, data = _Probe(weight_decay=3.0), SyntheticRegressionDataModule()
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    Tuner(trainer).lr_find(module, datamodule=data, num_training=5, update_attr=False)
    assert seen and all(seen)
    seen.clear()
    trainer.fit(module, data)
    assert seen and not any(seen)


# ----------------------------------------------------------------- torchmetrics
def test_metric_state_defaults_are_the_reset_values_by_state_name():
    import torch
    from torchmetrics import MeanSquaredError
    from torchmetrics.regression import SpearmanCorrCoef

    metric = MeanSquaredError()
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    defaults = compat.MetricInternals.state_defaults(metric)
    assert set(defaults) == {"sum_squared_error", "total"}
    metric.reset()
    for name, value in defaults.items():
        assert torch.equal(getattr(metric, name), value)
    assert all(isinstance(v, list) for v in compat.MetricInternals.state_defaults(
        SpearmanCorrCoef()).values())  # fmt: skip


def test_a_metrics_class_update_and_compute_are_its_maths_without_bookkeeping():
    import torch
    from torchmetrics import MeanSquaredError

    metric = MeanSquaredError()
    compat.MetricInternals.raw_update(metric)(metric, torch.tensor([3.0]), torch.tensor([1.0]))
    assert metric._update_count == 0  # the wrapped update counts; the class's does not
    assert compat.MetricInternals.raw_compute(metric)(metric) == 4.0
    assert metric._computed is None  # nor does it cache


def test_the_update_count_is_what_compute_checks_before_warning():
    import torch
    from torchmetrics import MeanSquaredError

    metric = MeanSquaredError()
    compat.MetricInternals.raw_update(metric)(metric, torch.tensor([3.0]), torch.tensor([1.0]))
    with pytest.warns(UserWarning, match="called before the ``update``"):
        metric.compute()
    metric.reset()
    compat.MetricInternals.raw_update(metric)(metric, torch.tensor([3.0]), torch.tensor([1.0]))
    compat.MetricInternals.set_update_count(metric, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metric.compute() == 4.0


def test_a_metric_that_never_synchronises_computes_from_its_own_states(monkeypatch):
    import torch
    from torchmetrics import MeanSquaredError

    metric = MeanSquaredError()
    metric.update(torch.tensor([3.0]), torch.tensor([1.0]))
    compat.MetricInternals.never_synchronise(metric)
    synced = []
    monkeypatch.setattr(metric, "sync", lambda *args, **kwargs: synced.append(kwargs))
    # As if in a process group of several processes: compute would synchronise.
    monkeypatch.setattr("torchmetrics.metric.jit_distributed_available", lambda: True)
    assert metric.compute() == 4.0
    assert all(not call.get("should_sync", True) for call in synced)
