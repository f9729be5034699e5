"""Every use of a private Lightning, torchmetrics or jsonargparse API, in one place.

The package uses public API wherever Lightning offers one. What remains is
gathered here, each item with the assumption it rests on; each assumption
has its own test in ``tests/training/test_compat.py``, so an upgrade that
breaks one fails a test named after it instead of the CLI at import time (or
a sweep's metrics at its first validation).
Nothing here is public API of this package.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

__all__ = [
    "CLI_SUBCOMMAND_HOOKS",
    "MetricInternals",
    "add_cli_subcommand",
    "batches_that_stepped",
    "build_cli_arguments",
    "cli_subcommand_parsers",
    "ignore_jsonargparse_deprecations",
    "initial_hparams",
    "restricted_classmethod",
    "searching_learning_rate",
    "subcommand_choices",
    "subcommand_parser",
]


def batches_that_stepped(trainer: Trainer) -> int:
    """The step Lightning attaches to metrics logged in the current optimizer step.

    Assumption: the fit loop's epoch loop counts it in ``_batches_that_stepped``
    (it equals ``trainer.global_step`` under automatic optimization with one
    optimizer, and counts batches under manual optimization), and its logger
    connector writes ``self.log`` values at that step.
    """
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def _restricted_classmethod() -> Callable[[Callable[..., Any]], Any]:
    try:  # Lightning's guard against calling load_from_checkpoint on an instance
        from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
    except ImportError:  # the guard is a nicety: a plain classmethod loads the same way
        return classmethod
    return _restricted_classmethod


#: The decorator Lightning puts on ``LightningModule.load_from_checkpoint``, so
#: that an override keeps refusing to be called on an instance. Assumption:
#: ``lightning.pytorch.utilities.model_helpers._restricted_classmethod``.
restricted_classmethod = _restricted_classmethod()


def initial_hparams(module: LightningModule) -> dict[str, Any]:
    """The mapping Lightning hands to loggers as the module's hyper-parameters, editable.

    ``module.hparams`` (public) is what checkpoints store; loggers receive
    ``module.hparams_initial``, a read-only copy of ``_hparams_initial``.
    Assumption: that attribute holds the mapping and edits to it reach the loggers.
    """
    return module._hparams_initial


def searching_learning_rate(trainer: Trainer) -> bool:
    """Whether ``trainer`` runs a learning-rate search (``Tuner.lr_find``, ``LearningRateFinder``).

    Assumption: during the search Lightning replaces the trainer's callbacks
    with one ``lightning.pytorch.tuner.lr_finder._LRCallback``.
    """
    try:
        from lightning.pytorch.tuner.lr_finder import _LRCallback
    except ImportError:
        return False
    return any(isinstance(callback, _LRCallback) for callback in trainer.callbacks)


def ignore_jsonargparse_deprecations() -> None:
    """Silence jsonargparse's deprecation warnings, raised by Lightning's own calls.

    Users cannot act on them. Assumption: they are of the class
    ``jsonargparse._deprecated.JsonargparseDeprecationWarning``; if it moves,
    they are matched by the module that defines the warning class instead.
    """
    try:
        from jsonargparse._deprecated import JsonargparseDeprecationWarning
    except ImportError:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="jsonargparse")
        return
    warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)


#: LightningCLI methods the CLI overrides to add a subcommand that is not a
#: ``Trainer`` method (``sweep``). Assumption: ``LightningCLI.__init__`` calls
#: ``_add_subcommands(parser, **kwargs)`` to build the subcommand parsers and
#: ``_run_subcommand(subcommand)`` to run the chosen one.
CLI_SUBCOMMAND_HOOKS = ("_add_subcommands", "_run_subcommand")


def build_cli_arguments(cli: LightningCLI, parser: Any) -> None:
    """Add the CLI's usual arguments (trainer, model, data, ...) to ``parser``.

    Assumption: ``LightningCLI._add_arguments(parser)`` does that for every
    subcommand parser, and calls ``add_arguments_to_parser``.
    """
    cli._add_arguments(parser)


def add_cli_subcommand(
    cli: LightningCLI, parser: Any, name: str, subparser: Any, help: str, runnable: bool = True
) -> None:
    """Register ``subparser`` as subcommand ``name`` of ``parser``, next to fit, validate, ...

    With ``runnable=False`` it is only listed (in ``--help``), for a subcommand
    handled before the CLI is built. Assumption: LightningCLI keeps its
    subcommand parsers in ``_subcommand_parsers``, the arguments passed on to
    the subcommand's method in ``_subcommand_method_arguments``, and
    jsonargparse's subcommands action in ``parser._subcommands_action``.
    """
    if runnable:
        cli._subcommand_parsers[name] = subparser
        cli._subcommand_method_arguments[name] = {}
    parser._subcommands_action.add_subcommand(name, subparser, help=help)


def cli_subcommand_parsers(cli: LightningCLI) -> dict[str, Any]:
    """Every runnable subcommand's parser by name. Assumption: ``cli._subcommand_parsers``."""
    return cli._subcommand_parsers


def subcommand_choices(parser: Any) -> list[Any]:
    """The entries ``--help`` lists for the subcommands, one per subcommand, each with a
    ``dest`` (its name) and an editable ``help``.

    Assumption: jsonargparse keeps them in ``parser._subcommands_action._choices_actions``.
    """
    return parser._subcommands_action._choices_actions


def subcommand_parser(cli: LightningCLI, name: str) -> Any:
    """The parser of subcommand ``name``. Assumption: ``LightningCLI._parser(name)``."""
    return cli._parser(name)


class MetricInternals:
    """What a sweep needs of a torchmetrics ``Metric`` beyond its public API.

    To run one metric's maths for many members at once, the sweep holds each
    state with a member dimension and calls the metric's own update and
    compute on it. Assumptions:

    * ``Metric._defaults`` maps each state's name (``add_state``) to its reset value;
    * the class's ``update`` and ``compute`` are the metric's maths alone: an
      instance's are those wrapped by ``Metric.__init__`` with bookkeeping
      (update counts, caching, synchronisation);
    * ``Metric._update_count`` counts the updates since the last reset;
    * ``compute`` synchronises across processes only while ``_to_sync`` is true
      (``sync_on_compute`` sets it at construction).
    """

    @staticmethod
    def state_defaults(metric: Any) -> dict[str, Any]:
        """Each state's name and reset value (a tensor, or a list for concatenated states)."""
        return dict(metric._defaults)

    @staticmethod
    def raw_update(metric: Any) -> Callable[..., None]:
        """``update`` without torchmetrics' bookkeeping: ``raw_update(metric)(metric, *inputs)``."""
        return type(metric).update

    @staticmethod
    def raw_compute(metric: Any) -> Callable[..., Any]:
        """``compute`` without caching or synchronisation: ``raw_compute(metric)(metric)``."""
        return type(metric).compute

    @staticmethod
    def set_update_count(metric: Any, count: int) -> None:
        """Record that ``metric``'s states hold ``count`` updates."""
        metric._update_count = count

    @staticmethod
    def never_synchronise(metric: Any) -> None:
        """Make ``compute`` use this process's states alone."""
        metric.sync_on_compute = False
        metric._to_sync = False
