"""``python -m wd_lightning`` / ``wd-lightning``: LightningCLI with weight-decay defaults."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse._deprecated import JsonargparseDeprecationWarning
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from wd_lightning.callbacks import WeightNormMonitor
from wd_lightning.errors import InvalidArgumentError, TrainingDivergedError

__all__ = ["WeightDecayCLI", "main"]

PROG = "wd-lightning"


# Lines of jsonargparse's nested error reports that describe its own machinery
# rather than the user's mistake.
_STRUCTURAL_PREFIXES = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "- Problem with given class_path",
    "Given value type:",
    "Given value:",
)
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)')
_NONE_ALTERNATIVE = re.compile(r"^- Expected a <class 'NoneType'>")
_CLASS_REPR = re.compile(r"<class '([\w.]+)'>")


def condense_parser_error(message: str) -> str:
    r"""Turn jsonargparse's multi-line error report into one line that names the option.

    Example:
        >>> condense_parser_error(
        ...     'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
        ...     "  Errors:\n    - Problem with given class_path 'wd_lightning.LinearRegression':\n"
        ...     '        Parser key "weight_decay":\n'
        ...     "          Expected a <class 'float'>. Got value: abc\n"
        ...     "    - Expected a <class 'NoneType'>"
        ... )
        '--model.weight_decay: Expected a float. Got value: abc'
    """
    keys: list[str] = []
    reason = ""
    for raw_line in message.splitlines():
        line = raw_line.strip()
        match = _PARSER_KEY.match(line)
        if match:
            keys.append(match.group(1))
            line = match.group(2)
        if not line or line.startswith(_STRUCTURAL_PREFIXES) or _NONE_ALTERNATIVE.match(line):
            continue
        reason = line.lstrip("- ")
        break
    reason = _CLASS_REPR.sub(r"\1", reason or message.strip().splitlines()[0])
    option = "--" + ".".join(key.replace(".init_args", "") for key in keys) if keys else ""
    return f"{option}: {reason}" if option else reason


class OneLineErrorParser(LightningArgumentParser):
    """Reports parse errors on one line, without jsonargparse's usage dump.

    Abbreviated options are refused: argparse would otherwise read a typo such
    as ``--trainer.max_epoch`` as ``--trainer.max_epochs`` without a word.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        print(f"{PROG}: error: {condense_parser_error(message)}", file=sys.stderr)
        print(f"{PROG}: see '{PROG} <subcommand> --help' for the accepted options", file=sys.stderr)
        raise SystemExit(2)


class WeightDecayCLI(LightningCLI):
    """LightningCLI whose defaults are the article's λ = 3 run.

    Differences from a plain LightningCLI:

    * the optimizer is chosen with ``--model.optimizer`` (injected into the
      module) and there is no top-level ``--optimizer``, which would replace the
      module's ``configure_optimizers`` and lose the parameter groups;
    * ``--data.num_inputs`` is linked to the model's ``num_inputs`` when the
      model has one, so the input size is set in one place;
    * a :class:`~wd_lightning.WeightNormMonitor` is always attached,
      configurable as ``--weight_norm.*``;
    * the seed defaults to 0, so a run with no arguments is reproducible;
    * Lightning's model summary is off (the parameter-group report replaces
      it), and checkpoints follow :func:`default_checkpoint`;
    * a fit ends with :func:`fit_summary`, printed by global rank zero.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault(
            "trainer_defaults",
            {
                "max_epochs": 100,
                "log_every_n_steps": 4,
                # The parameter-group report printed at fit start counts the
                # parameters per group; Lightning's summary table would repeat
                # that and, since 2.6, also counts FLOPs: a third of the book run.
                "enable_model_summary": False,
            },
        )
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(WeightNormMonitor, "weight_norm")
        parser.set_defaults(
            {
                "model": {"class_path": "wd_lightning.LinearRegression"},
                "data": {"class_path": "wd_lightning.SyntheticRegressionDataModule"},
            }
        )
        parser.link_arguments(
            "data.init_args.num_inputs", "model.init_args.num_inputs", apply_on="parse"
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with this CLI's defaults for what the user left unset.

        * Logger: Lightning's default TensorBoard logger (logs still go to
          ``<default_root_dir>/lightning_logs/version_N``) without its
          ``hp_metric = -1`` placeholder: the weight-norm monitor fills the
          HPARAMS tab with real final metrics.
        * Checkpoints: :func:`default_checkpoint` instead of a checkpoint after
          every epoch, unless checkpointing is off or a ModelCheckpoint is given.
        """
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            save_dir = config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = TensorBoardLogger(save_dir=save_dir, default_hp_metric=False)
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(callback, ModelCheckpoint) for callback in callbacks
        ):
            callbacks.append(default_checkpoint())
        kwargs.setdefault("callbacks", [*callbacks, FitSummaryPrinter()])
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            invalid = _find_cause(error, InvalidArgumentError)
            if invalid is None:
                raise
            raise InvalidArgumentError(
                self._option_name(invalid.argument), invalid.value, invalid.allowed
            ) from None

    def _option_name(self, argument: str) -> str:
        """The command-line spelling of a constructor argument, e.g. ``--model.weight_decay``."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        head = argument.split(".")[0]
        # The data module comes first: an argument linked from the data is set there.
        for section in ("data", "model"):
            init_args = config.get(f"{section}.init_args")
            if init_args is not None and head in init_args:
                return f"--{section}.{argument}"
        return argument


class FitSummaryPrinter(Callback):
    """Prints :func:`fit_summary` from global rank zero when a fit ends.

    A callback rather than code after ``trainer.fit``: with ``ddp_spawn`` the
    training runs in child processes, and the CLI's own process never sees
    the trained step count, optimizer or run directory.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank computes it (sharded norms and the log directory are collective).
        summary = fit_summary(trainer)
        if trainer.is_global_zero:
            print(summary)


def default_checkpoint() -> ModelCheckpoint:
    """``last.ckpt`` at the end of training, every 5 minutes of training, and on an exception.

    Lightning's default writes a checkpoint after every epoch: for the book's
    100 one-millisecond epochs that is most of the run's time, and for long
    epochs it is still only as often as an epoch ends. Time-based saving costs
    the same on both, ``save_last`` keeps a stable name to resume from
    (``--ckpt_path lightning_logs/version_N/checkpoints/last.ckpt``), and saving
    on an exception (including an interrupt) keeps the work done before it.
    """
    return ModelCheckpoint(
        save_last=True, train_time_interval=timedelta(minutes=5), save_on_exception=True
    )


def fit_summary(trainer: Trainer) -> str:
    """The final figures of a fit: weight norms per group, last losses, and where the logs are."""
    figures = {
        tag: float(value)
        for tag, value in trainer.callback_metrics.items()
        if tag.startswith(("train/", "val/"))
    }
    if trainer.optimizers:
        norms = WeightNormMonitor.norms(trainer.optimizers[0])
        figures.update({tag: float(value) for tag, value in norms.items()})
    width = max(map(len, figures), default=0)
    lines = [f"fit finished after {trainer.global_step} optimizer steps"]
    lines += [f"  {tag:<{width}}  {value:.6g}" for tag, value in sorted(figures.items())]
    if trainer.log_dir:
        lines.append(
            f"logs: {trainer.log_dir}  (view: tensorboard --logdir {Path(trainer.log_dir).parent})"
        )
    return "\n".join(lines)


def _find_cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``error``'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(args: Sequence[str] | None = None) -> None:
    """Run the CLI.

    A user's mistake ends the process with a one-line message and exit code 2;
    a diverged run with exit code 1.
    """
    # Lightning calls jsonargparse APIs that warn on every run; users cannot act on it.
    warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance.treespec, LeafSpec.* is deprecated")
    try:
        WeightDecayCLI(args=args)
    except InvalidArgumentError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDivergedError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
