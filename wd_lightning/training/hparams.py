"""The hyper-parameters a run shows in TensorBoard's HParams tab, the same for a fit and a sweep.

One table compares runs only if every run describes itself with the same
keys: a fit (through :class:`~wd_lightning.WeightNormMonitor`) and each
member of a sweep both write it with :func:`log_final_hparams`.

The tab's metrics are the run's own curves (``train/loss``, ``val/loss``,
``val/<metric>``, ``weight_norm/total``): TensorBoard shows the last point of
each. Copies of the final values under separate tags would only add charts of
one point each to the top of TensorBoard's scalar pages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "HEADLINE_HPARAMS",
    "final_metric_tags",
    "global_seed",
    "hparams_summaries",
    "log_final_hparams",
    "run_hparams",
]

HParamValue = float | int | str | bool
#: The columns the HParams table shows first and by default (TensorBoard shows five; the
#: others, batch_size among them, are one click away in its list of hyper-parameters).
HEADLINE_HPARAMS = ("weight_decay", "lr", "optimizer", "seed", "status")


def run_hparams(
    module: Any,
    datamodule: Any,
    optimizer: Any,
    seed: int | None,
    status: str = "ok",
) -> dict[str, HParamValue]:
    """The hyper-parameters of one run, as the HParams tab shows them.

    * ``model`` and ``data``: the classes of the module and the data module;
    * the module's and the data module's own hyper-parameters
      (``save_hyperparameters``) that are numbers, strings or booleans; private
      keys (LightningCLI's ``_class_path`` and ``_instantiator``) and ``None``
      values are left out, and the module's win where both have a key;
    * ``optimizer`` and ``lr``: the optimizer's class and base learning rate
      (callables such as an optimizer factory cannot be shown, so the built
      optimizer is asked);
    * ``seed``: the seed of the initial weights, when known;
    * ``status``: ``ok``, or ``diverged`` for a sweep member that diverged.

    Example:
        >>> import torch
        >>> from wd_lightning import LinearRegression, SyntheticRegressionDataModule
        >>> module = LinearRegression(num_inputs=4)
        >>> params = run_hparams(
        ...     module, SyntheticRegressionDataModule(num_inputs=4),
        ...     module.configure_optimizers(), seed=0,
        ... )
        >>> {key: params[key] for key in ("optimizer", "lr", "weight_decay", "seed")}
        {'optimizer': 'SGD', 'lr': 0.003, 'weight_decay': 3.0, 'seed': 0}
    """
    params: dict[str, HParamValue] = {"model": type(module).__name__}
    if datamodule is not None:
        params["data"] = type(datamodule).__name__
        params.update(_shown(getattr(datamodule, "hparams", {})))
    params.update(_shown(getattr(module, "hparams", {})))
    if optimizer is not None:
        params["optimizer"] = type(optimizer).__name__
        lr = optimizer.defaults.get("lr")
        if isinstance(lr, (int, float)):
            params["lr"] = float(lr)
    if seed is not None:
        params["seed"] = int(seed)
    params["status"] = status
    return params


def global_seed() -> int | None:
    """The seed ``seed_everything`` set for this process (``None`` if it was not called).

    Example:
        >>> from lightning.pytorch import seed_everything
        >>> _ = seed_everything(7, verbose=False)
        >>> global_seed()
        7
    """
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _shown(hparams: Mapping[str, Any]) -> dict[str, HParamValue]:
    return {
        key: value
        for key, value in hparams.items()
        if not key.startswith("_") and isinstance(value, (bool, int, float, str))
    }


def final_metric_tags(tags: Iterable[str]) -> list[str]:
    """The tags among ``tags`` whose last point the HParams tab shows, sorted.

    Example:
        >>> final_metric_tags(["val/mse", "weight_norm/decay", "train/loss", "val/loss", "epoch",
        ...                    "weight_norm/total"])
        ['train/loss', 'val/loss', 'val/mse', 'weight_norm/total']
    """
    kept = {"train/loss", "weight_norm/total"}
    return sorted({tag for tag in tags if tag in kept or tag.startswith("val/")})


def hparams_summaries(
    params: Mapping[str, HParamValue], metric_tags: Iterable[str], status: str = "ok"
) -> list[Any]:
    """The three HParams ``Summary`` protocol buffers of one run, to write at its last step.

    A run whose ``status`` is not ``ok`` (a diverged sweep member) ends as a
    failed session, which the HParams tab shows in its status column. The
    :data:`HEADLINE_HPARAMS` are the columns the tab shows before the others.

    Example:
        >>> summaries = hparams_summaries({"weight_decay": 3.0}, ["val/loss"], status="diverged")
        >>> [summary.value[0].tag for summary in summaries]
        ['_hparams_/experiment', '_hparams_/session_start_info', '_hparams_/session_end_info']
    """
    # Imported here: only runs that write HParams need the protobuf stack.
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    # torch takes the metrics' tags from this dict; their values come from the curves.
    experiment, start, end = hparams(dict(params), dict.fromkeys(metric_tags, 0.0))
    # TensorBoard sorts the columns by (not differs, name) and shows the first few: marked
    # so, the hyper-parameters runs are usually compared by come first, not b_true, bias_init...
    value = experiment.value[0]
    content = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in HEADLINE_HPARAMS
    value.metadata.plugin_data.content = content.SerializeToString()
    if status != "ok":
        content = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_FAILURE),
            version=metadata.PLUGIN_DATA_VERSION,
        )
        plugin = SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
        )
        value = Summary.Value(
            tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin)
        )
        end = Summary(value=[value])
    return [experiment, start, end]


def log_final_hparams(
    targets: Iterable[Any],
    module: Any,
    datamodule: Any,
    *,
    optimizer: Any,
    seed: int | None,
    metric_tags: Iterable[str],
    step: int,
    status: str = "ok",
) -> None:
    """Fill the HPARAMS tab of every target with the run's hyper-parameters, at its last step.

    Args:
        targets: ``TensorBoardLogger`` s, or anything with ``add_summary(summary, step)``
            (the sweep's :class:`~wd_lightning.training.tensorboard.RunWriter`).
        module: the trained module; its saved hyper-parameters are shown.
        datamodule: the data module, or ``None``.
        optimizer: the optimizer the run built (its class and learning rate are shown).
        seed: the seed of the initial weights, or ``None`` if unknown.
        metric_tags: the tags the run logged; :func:`final_metric_tags` picks the metrics.
        step: the run's last step.
        status: ``ok``, or ``diverged``.

    Lightning's ``log_hyperparams`` is not used: it would also write each metric
    again as a one-point scalar, and it writes nothing without metrics.
    """
    params = run_hparams(module, datamodule, optimizer, seed, status)
    summaries = hparams_summaries(params, final_metric_tags(metric_tags), status)
    for target in targets:
        # A TensorBoardLogger writes through its SummaryWriter's event file.
        writer = target.experiment.file_writer if hasattr(target, "experiment") else target
        for summary in summaries:
            writer.add_summary(summary, step)
