from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from tests.core.test_norms import run_worker
from tests.fits import quiet_trainer
from wd_lightning import (
    InvalidArgumentError,
    LinearRegression,
    SyntheticRegressionDataModule,
    WeightDecayModule,
    WeightNormMonitor,
)
from wd_lightning.training import callbacks
from wd_lightning.training.tensorboard import read_scalars


class _NormsBeforeEachStep(Callback):
    """Independent reference: the weight and bias norms just before each optimizer step."""

    def __init__(self) -> None:
        self.norms: list[tuple[float, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        weight, bias = pl_module.model.weight, pl_module.model.bias
        self.norms.append((weight.detach().norm().item(), bias.detach().norm().item()))


def _fit_logged(tmp_path, epochs=5, **trainer_kwargs):
    seed_everything(0, verbose=False)
    model = LinearRegression(weight_decay=3.0)
    reference = _NormsBeforeEachStep()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[WeightNormMonitor(), reference],
        **trainer_kwargs,
    )
    trainer.fit(model, SyntheticRegressionDataModule())
    return model, trainer, reference, read_scalars(logger.log_dir)


def test_logs_group_norms_matching_independent_norms(tmp_path):
    model, _, reference, scalars = _fit_logged(tmp_path, log_every_n_steps=2)
    decay, no_decay, total = (
        dict(scalars[f"weight_norm/{g}"]) for g in ("decay", "no_decay", "total")
    )
    # Step s holds the weights after s optimizer steps: those the (s+1)-th step starts from.
    assert sorted(decay) == [*range(1, 20, 2), 20]
    for step in range(1, 20, 2):
        weight_norm, bias_norm = reference.norms[step]
        assert decay[step] == pytest.approx(weight_norm, rel=1e-6)
        assert no_decay[step] == pytest.approx(bias_norm, rel=1e-6, abs=1e-7)
        assert total[step] == pytest.approx((weight_norm**2 + bias_norm**2) ** 0.5, rel=1e-6)
    # The last point is the trained model.
    assert decay[20] == pytest.approx(model.model.weight.detach().norm().item(), rel=1e-6)


def test_norm_steps_line_up_with_the_training_loss(tmp_path):
    _, _, _, scalars = _fit_logged(tmp_path, log_every_n_steps=3)
    loss_steps = [step for step, _ in scalars["train/loss"]]
    norm_steps = [step for step, _ in scalars["weight_norm/decay"]]
    assert norm_steps[:-1] == loss_steps
    assert norm_steps[-1] == 20


@pytest.mark.parametrize("accumulate", [2, 4])
def test_once_per_optimizer_step_under_accumulation(tmp_path, accumulate):
    _, trainer, reference, scalars = _fit_logged(
        tmp_path, epochs=8, log_every_n_steps=1, accumulate_grad_batches=accumulate
    )
    assert trainer.global_step == 32 // accumulate
    steps = [step for step, _ in scalars["weight_norm/decay"]]
    assert steps == [*range(trainer.global_step), trainer.global_step]
    assert len(reference.norms) == trainer.global_step


def test_own_interval_overrides_the_trainer(tmp_path):
    seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    quiet_trainer(
        max_epochs=5, logger=logger, log_every_n_steps=1, callbacks=[WeightNormMonitor(5)]
    ).fit(LinearRegression(), SyntheticRegressionDataModule())
    steps = [step for step, _ in read_scalars(logger.log_dir)["weight_norm/total"]]
    assert steps == [4, 9, 14, 19, 20]


def test_unnamed_groups_are_called_pgN():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    norms = WeightNormMonitor.norms(optimizer)
    assert list(norms) == ["weight_norm/pg0", "weight_norm/pg1", "weight_norm/total"]
    torch.testing.assert_close(norms["weight_norm/pg0"], model.weight.detach().norm())


def test_bf16_parameters_are_measured_in_float32():
    weight = nn.Parameter(torch.full((1000,), 0.1, dtype=torch.bfloat16))
    norms = WeightNormMonitor.norms(torch.optim.SGD([weight], lr=0.1))
    assert norms["weight_norm/total"].dtype == torch.float32
    expected = weight.detach().float().norm()
    torch.testing.assert_close(norms["weight_norm/total"], expected, rtol=1e-6, atol=0)


def _count_measurements(monkeypatch) -> list[int]:
    """Count the monitor's norm computations (each one fused pass over the parameters)."""
    calls: list[int] = []
    original = callbacks.squared_norms
    monkeypatch.setattr(
        callbacks, "squared_norms", lambda tensors: calls.append(len(tensors)) or original(tensors)
    )
    return calls


def test_nothing_is_computed_without_a_logger(monkeypatch):
    calls = _count_measurements(monkeypatch)
    module = WeightDecayModule(nn.Linear(200, 1), weight_decay=1.0)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=1, callbacks=[WeightNormMonitor()])
    trainer.fit(module, SyntheticRegressionDataModule())
    assert trainer.global_step == 4
    assert calls == []


def test_nothing_is_computed_between_logging_steps(tmp_path, monkeypatch):
    calls = _count_measurements(monkeypatch)
    _fit_logged(tmp_path, epochs=5, log_every_n_steps=10)
    assert calls == [2, 2, 2]  # steps 9 and 19, and the end of training; both tensors at once


@pytest.mark.parametrize("interval", [0, -2, 1.5])
def test_bad_interval_is_rejected(interval):
    with pytest.raises(InvalidArgumentError, match="logging_interval"):
        WeightNormMonitor(interval)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("log_modules", 1),
        ("log_params", "yes"),
        ("log_histograms", None),
        ("log_update_ratio", 0),
        ("custom_scalars", "false"),
        ("log_hparams", 1.0),
        ("train_loss", ""),
        ("val_loss", 3),
    ],
)
def test_bad_options_are_rejected_by_name(argument, value):
    with pytest.raises(InvalidArgumentError, match=f"^{argument}="):
        WeightNormMonitor(**{argument: value})


def test_strategies_with_flattened_shards_are_refused_at_fit_start():
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(TypeError, match=r"FSDPStrategy.*ModelParallelStrategy"):
        WeightNormMonitor().on_fit_start(trainer, None)


# ------------------------------------------------------ per module and parameter
class _WeightsBeforeEachStep(Callback):
    """Independent reference: a copy of every parameter just before each optimizer step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        named = pl_module.model.named_parameters()
        self.weights.append({name: p.detach().float().clone() for name, p in named})

    def on_train_end(self, trainer, pl_module) -> None:
        named = pl_module.model.named_parameters()
        self.weights.append({name: p.detach().float().clone() for name, p in named})


def _norm(*tensors: torch.Tensor) -> float:
    return torch.cat([t.flatten() for t in tensors]).norm().item()


def _fit_two_layer(tmp_path, monitor, **trainer_kwargs):
    seed_everything(0, verbose=False)
    net = nn.Sequential(nn.Linear(200, 8), nn.Tanh(), nn.Linear(8, 1))
    module = WeightDecayModule(net, weight_decay=0.5, optimizer=_adamw)
    reference = _WeightsBeforeEachStep()
    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    trainer_kwargs = {"max_epochs": 3, "log_every_n_steps": 1, **trainer_kwargs}
    trainer = quiet_trainer(logger=logger, callbacks=[monitor, reference], **trainer_kwargs)
    trainer.fit(module, SyntheticRegressionDataModule())
    return trainer, reference.weights, logger.log_dir


def _adamw(groups):
    return torch.optim.AdamW(groups, lr=0.05)


def test_module_and_parameter_norms_match_independent_norms(tmp_path):
    monitor = WeightNormMonitor(log_modules=True, log_params=True)
    _, weights, log_dir = _fit_two_layer(tmp_path, monitor)
    scalars = {tag: dict(series) for tag, series in read_scalars(log_dir).items()}
    assert sorted(scalars["weight_norm/param/0.weight"]) == list(range(13))
    for step in (0, 5, 12):
        w = weights[step]
        for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
            logged = scalars[f"weight_norm/param/{name}"][step]
            assert logged == pytest.approx(_norm(w[name]), rel=1e-6)
        for module_name in ("0", "2"):
            logged = scalars[f"weight_norm/module/{module_name}"][step]
            expected = _norm(w[f"{module_name}.weight"], w[f"{module_name}.bias"])
            assert logged == pytest.approx(expected, rel=1e-6)
        expected_decay = _norm(w["0.weight"], w["2.weight"])
        assert scalars["weight_norm/decay"][step] == pytest.approx(expected_decay, rel=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_update_ratio_is_the_step_applied_after_the_logged_weights(
    tmp_path, monkeypatch, accumulate
):
    snapshots = []
    original = callbacks.snapshot
    monkeypatch.setattr(
        callbacks, "snapshot", lambda tensors: snapshots.append(1) or original(tensors)
    )
    monitor = WeightNormMonitor(logging_interval=2, log_update_ratio=True)
    trainer, weights, log_dir = _fit_two_layer(
        tmp_path, monitor, max_epochs=4, accumulate_grad_batches=accumulate
    )
    scalars = {tag: dict(series) for tag, series in read_scalars(log_dir).items()}
    logged_steps = list(range(1, trainer.global_step, 2))
    assert sorted(scalars["update_ratio/decay"]) == logged_steps
    assert len(snapshots) == len(logged_steps)  # a copy on logging steps only
    for step in logged_steps:
        before, after = weights[step], weights[step + 1]
        for group, names in (
            ("decay", ["0.weight", "2.weight"]),
            ("no_decay", ["0.bias", "2.bias"]),
        ):
            moved = _norm(*(after[n] - before[n] for n in names))
            expected = moved / _norm(*(before[n] for n in names))
            assert scalars[f"update_ratio/{group}"][step] == pytest.approx(expected, rel=1e-5)
        total = _norm(*(after[n] - before[n] for n in before)) / _norm(*before.values())
        assert scalars["update_ratio/total"][step] == pytest.approx(total, rel=1e-5)
    assert monitor._pending == []


def test_histograms_of_each_parameter(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        EventAccumulator,
    )

    monitor = WeightNormMonitor(logging_interval=4, log_histograms=True)
    _, weights, log_dir = _fit_two_layer(tmp_path, monitor)
    events = EventAccumulator(log_dir, size_guidance={HISTOGRAMS: 0})
    events.Reload()
    assert sorted(events.Tags()[HISTOGRAMS]) == [
        f"weight_hist/{n}" for n in ("0.bias", "0.weight", "2.bias", "2.weight")
    ]
    histograms = events.Histograms("weight_hist/0.weight")
    assert [h.step for h in histograms] == [3, 7, 11, 12]
    for histogram in histograms:
        values = weights[histogram.step]["0.weight"]
        assert histogram.histogram_value.num == values.numel()
        assert histogram.histogram_value.min == pytest.approx(values.min().item())
        assert histogram.histogram_value.max == pytest.approx(values.max().item())


def test_bf16_model_is_logged_with_float32_accuracy(tmp_path):
    trainer, weights, log_dir = _fit_two_layer(
        tmp_path, WeightNormMonitor(), precision="bf16-true", max_epochs=1
    )
    assert trainer.lightning_module.model[0].weight.dtype == torch.bfloat16
    decay = dict(read_scalars(log_dir)["weight_norm/decay"])
    for step in (0, 2, 4):
        expected = _norm(weights[step]["0.weight"], weights[step]["2.weight"])
        assert decay[step] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------- several optimizers
class _TwoOptimizers(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = nn.ModuleDict({"a": nn.Linear(200, 2), "b": nn.Linear(2, 1)})

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.model["b"](self.model["a"](inputs)), targets)
        self.log("train/loss", loss)
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.model["a"].parameters(), lr=0.01),
            torch.optim.SGD(self.model["b"].parameters(), lr=0.01),
        )


def test_each_optimizer_gets_its_own_tags(tmp_path):
    seed_everything(0, verbose=False)
    module = _TwoOptimizers()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=2, log_every_n_steps=2, logger=logger, callbacks=[WeightNormMonitor()]
    )
    trainer.fit(module, SyntheticRegressionDataModule())
    scalars = read_scalars(logger.log_dir)
    assert {tag for tag in scalars if tag.startswith("weight_norm/")} == {
        "weight_norm/pg0",
        "weight_norm/total",
        "weight_norm/optimizer1/pg0",
        "weight_norm/optimizer1/total",
    }
    assert [s for s, _ in scalars["weight_norm/optimizer1/pg0"]] == [1, 3, 5, 7, 8]
    final = dict(scalars["weight_norm/optimizer1/pg0"])[8]
    assert final == pytest.approx(_norm(*module.model["b"].parameters()), rel=1e-6)
    assert dict(scalars["weight_norm/pg0"])[8] == pytest.approx(
        _norm(*(p.detach() for p in module.model["a"].parameters())), rel=1e-6
    )


# ------------------------------------------------------ TensorBoard ergonomics
def _plugin_events(log_dir, plugin):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events, events.PluginTagToContent(plugin)


def test_custom_scalars_layout_is_written_once(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    _, _, _, _ = _fit_logged(tmp_path, epochs=1)
    events, _ = _plugin_events(tmp_path / "run" / "version_0", "custom_scalars")
    layouts = events.Tensors("custom_scalars__config__")
    assert len(layouts) == 1  # the module no longer writes one of its own
    layout = layout_pb2.Layout()
    layout.ParseFromString(layouts[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts == {
        "loss: train vs validation": [r"^train/loss$", r"^val/loss$"],
        "weight norm per group": [
            r"^weight_norm/decay$",
            r"^weight_norm/no_decay$",
            r"^weight_norm/total$",
        ],
        "initial weights remaining per group": [r"^weight_decay/init_remaining/decay$"],
    }


def test_hparams_tab_gets_hyperparameters_and_final_metrics(tmp_path):
    from tensorboard.plugins.hparams import metadata

    seed_everything(0, verbose=False)
    model = LinearRegression(weight_decay=3.0)
    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    monitor = WeightNormMonitor()
    trainer = quiet_trainer(max_epochs=3, log_every_n_steps=4, logger=logger, callbacks=[monitor])
    trainer.fit(model, SyntheticRegressionDataModule())
    scalars = read_scalars(logger.log_dir)
    # The metrics are the curves' last points: no one-point copies, no placeholder.
    assert not any(tag.startswith("hp") for tag in scalars)
    assert scalars["weight_norm/total"][-1] == (12, pytest.approx(_norm(*model.parameters())))

    _, content = _plugin_events(logger.log_dir, metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert sorted(m.name.tag for m in experiment.metric_infos) == [
        "train/loss",
        "val/loss",
        "val/mse",
        "weight_norm/total",
    ]
    # The columns TensorBoard shows first.
    assert sorted(info.name for info in experiment.hparam_infos if info.differs) == [
        "lr", "optimizer", "seed", "status", "weight_decay",
    ]  # fmt: skip
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    shown = {
        name: value.number_value if value.HasField("number_value") else value.string_value
        for name, value in start.hparams.items()
    }
    assert {key: shown[key] for key in ("weight_decay", "lr", "optimizer", "seed")} == {
        "weight_decay": 3.0,
        "lr": 0.003,
        "optimizer": "SGD",
        "seed": 0.0,
    }
    assert shown["num_train"] == 20 and shown["batch_size"] == 5  # from the datamodule
    assert shown["model"] == "LinearRegression" and shown["data"] == "SyntheticRegressionDataModule"
    assert not any(name.startswith("_") for name in shown)


def test_no_hparams_when_switched_off(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    monitor = WeightNormMonitor(log_hparams=False, custom_scalars=False)
    quiet_trainer(max_epochs=1, logger=logger, callbacks=[monitor]).fit(
        LinearRegression(), SyntheticRegressionDataModule()
    )
    scalars = read_scalars(logger.log_dir)
    assert "weight_norm/total" in scalars
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    for plugin in ("hparams", "custom_scalars"):
        with pytest.raises(KeyError, match="could not be found"):
            events.PluginTagToContent(plugin)


# ---------------------------------------------------------------- distributed
def _logged_by(record, prefix):
    return [
        (step, metrics)
        for step, metrics in record["logged"]
        if any(tag.startswith(prefix) for tag in metrics)
    ]


def _check_distributed_run(ranks, steps):
    zero, one = ranks
    assert zero["global_step"] == one["global_step"] == steps
    # Rank 1 measured (a sharded run needs it for the all-reduce) but logged nothing.
    assert _logged_by(one, "weight_norm/") == [] and _logged_by(one, "update_ratio/") == []
    norms = {step: m for step, m in _logged_by(zero, "weight_norm/")}
    assert sorted(norms) == list(range(steps + 1))  # every step, under accumulation, + final
    for step, metrics in norms.items():
        reference = zero["reference"][str(step)]
        for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
            logged = metrics[f"weight_norm/param/model.{name}"]
            assert logged == pytest.approx(reference[name], rel=1e-5)
        decay = (reference["0.weight"] ** 2 + reference["2.weight"] ** 2) ** 0.5
        assert metrics["weight_norm/decay"] == pytest.approx(decay, rel=1e-5)
    ratios = {step: m for step, m in _logged_by(zero, "update_ratio/")}
    assert sorted(ratios) == list(range(steps))
    for step, metrics in ratios.items():
        reference = zero["reference"][str(step)]
        moved = (reference["moved/0.bias"] ** 2 + reference["moved/2.bias"] ** 2) ** 0.5
        size = (reference["0.bias"] ** 2 + reference["2.bias"] ** 2) ** 0.5
        assert metrics["update_ratio/no_decay"] == pytest.approx(moved / size, rel=1e-4)


@pytest.mark.slow
def test_ddp_logs_once_from_rank_zero(tmp_path):
    ranks = run_worker("ddp", tmp_path)
    assert ranks[0]["parameter_types"] == ["Parameter"]
    # 32 samples over 2 ranks, batches of 4, 2 batches per step, 2 epochs.
    _check_distributed_run(ranks, steps=4)
    scalars = read_scalars(tmp_path / "tb" / "version_0")
    assert [s for s, _ in scalars["weight_norm/decay"]] == list(range(5))
    assert len(list((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_fsdp2_sharded_parameters_are_measured_whole(tmp_path):
    ranks = run_worker("fsdp2", tmp_path)
    assert ranks[0]["parameter_types"] == ranks[1]["parameter_types"] == ["DTensor"]
    _check_distributed_run(ranks, steps=8)
    scalars = read_scalars(tmp_path / "tb" / "version_0")
    assert [s for s, _ in scalars["weight_norm/decay"]] == list(range(9))
