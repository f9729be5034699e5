"""``python -m wd_lightning`` / ``wd-lightning``: LightningCLI with weight-decay defaults."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch import __version__ as lightning_version
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden

from wd_lightning.config_files import (
    describe_config,
    resolve_config_arguments,
    shipped_configs,
)
from wd_lightning.core.errors import (
    InvalidArgumentError,
    TrainerArgumentError,
    TrainingDivergedError,
    TrainingInterruptedError,
)
from wd_lightning.training.callbacks import WeightNormMonitor
from wd_lightning.training.checkpoints import check_state_dict, is_local_path, read_checkpoint
from wd_lightning.training.compat import (
    add_cli_subcommand,
    build_cli_arguments,
    cli_subcommand_parsers,
    ignore_jsonargparse_deprecations,
    subcommand_choices,
    subcommand_parser,
)
from wd_lightning.training.interrupts import InterruptGuard, quiet_interrupt_notices
from wd_lightning.training.logging import (
    BufferedTensorBoardLogger,
    FlushLoggersAtEpochEnd,
    TimedProgressBar,
)
from wd_lightning.training.random_state import RandomStateCheckpoint
from wd_lightning.training.rundir import discard_unstarted_run

__all__ = ["WeightDecayCLI", "main"]

PROG = "wd-lightning"
DESCRIPTION = "Weight decay done right in PyTorch Lightning: train, sweep λ, draw the figures."
# The subcommands and what each does, for the overview and for --help.
SUBCOMMANDS = {
    "fit": "train a model; with no options, the article's λ = 3 run",
    "validate": "score a trained checkpoint (--ckpt_path) on the held-out set",
    "test": "score a trained checkpoint (--ckpt_path) on the test set, which fit never sees",
    "sweep": "train a λ × seed grid in one vectorised fit and compare it with ridge",
    "plot": "draw a sweep's figures again from its tables",
    "check-optimizer": "identify which weight-decay rule an optimizer follows",
}
# The options of this package that --help lists first, before Lightning's: (option,
# a value that parses, what it does). The tests parse every one of them.
_CONFIG_HELP = "a shipped config by name (the bare command lists them) or a file"
LEAD_OPTIONS = (
    ("--config", "d2l_weight_decay", _CONFIG_HELP),
    ("--model.weight_decay", "3.0", "λ of the penalty λ/2·‖w‖² on the decay group (default 3)"),
    ("--model.optimizer", "torch.optim.AdamW", "the optimizer class (default torch.optim.SGD)"),
    ("--model.optimizer.lr", "0.003", "its learning rate; any of its options works the same way"),
    ("--model.penalty", "loss", "λ as the optimizer's weight_decay (default) or in the loss"),
    ("--model.decay_rules.decay_bias", "true", "decay biases too (also decay_norm, decay_low_dim)"),
    ("--model.decay_rules.no_decay", "[bias]", "name patterns that never decay"),
    (
        "--model",
        "wd_lightning.LinearRegression",
        "the model; '--model.help CLASS' lists its options",
    ),
    ("--data.num_train", "20", "training examples (default 20: fewer than the 200 inputs)"),
    ("--data.batch_size", "5", "training minibatch size"),
    ("--data.data_seed", "0", "seed of the data and the batch order"),
    ("--data.num_test", "100", "examples of the test set that 'test' scores"),
    ("--seed_everything", "0", "seed of the initial weights (default 0)"),
    ("--trainer.max_epochs", "100", "epochs to train (default 100: 400 steps)"),
)


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
_YAML_ERROR = "Problems parsing config:"
_YAML_POSITION = re.compile(r"line (\d+), column (\d+)")


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
    if message.startswith(_YAML_ERROR):
        return _condense_yaml_error(message)
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
    reason = re.sub(r"(?:a )?typing\.Literal\[", "one of [", reason)
    option = "--" + ".".join(key.replace(".init_args", "") for key in keys) if keys else ""
    return f"{option}: {reason}" if option else reason


def _condense_yaml_error(message: str) -> str:
    """PyYAML's report (context, problem, each with an "in <unicode string>" line) as one line."""
    lines = [line.strip() for line in message.removeprefix(_YAML_ERROR).splitlines()]
    problem = [line for line in lines if line and not line.startswith("in ")][-1]
    positions = _YAML_POSITION.findall(message)
    where = f" at line {positions[-1][0]}, column {positions[-1][1]}" if positions else ""
    return f"--config: not valid YAML: {problem}{where}"


_LEAD_MARKER = "@@wd-lightning-lead@@"


def lead_help(subcommand: str) -> str:
    """The section ``<subcommand> --help`` starts with: the options of this package.

    Example:
        >>> print(lead_help("fit").splitlines()[0])
        The options of this package (all options, Lightning's included, follow):
    """
    rows = list(LEAD_OPTIONS)
    if subcommand in ("validate", "test"):
        rows.insert(0, ("--ckpt_path", "PATH", "the trained run to score (required)"))
    else:
        rows.append(("--ckpt_path", "PATH", "resume a fit from this checkpoint"))
    if subcommand == "sweep":
        dropped = ("--config", "--model.weight_decay", "--seed_everything", "--ckpt_path")
        rows = [row for row in rows if row[0] not in dropped]
        rows[0:0] = [
            ("--config", "sweep", _CONFIG_HELP),
            ("--weight_decays", "[0,3]", "the λ values of the grid"),
            ("--seeds", "[0,1]", "the seeds of the initial weights"),
            ("--output_dir", "DIR", "where runs, tables and figures go"),
        ]
    width = max(len(f"{option} {value}") for option, value, _ in rows)
    lines = ["The options of this package (all options, Lightning's included, follow):"]
    lines += [f"  {f'{option} {value}':<{width}}  {text}" for option, value, text in rows]
    return "\n".join(lines)


class OneLineErrorParser(LightningArgumentParser):
    """Reports parse errors on one line, without jsonargparse's usage dump.

    Abbreviated options are refused: argparse would otherwise read a typo such
    as ``--trainer.max_epoch`` as ``--trainer.max_epochs`` without a word.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.lead: str | None = None

    def format_help(self) -> str:
        """Argparse's help with :attr:`lead`, this package's main options, after the description."""
        if not self.lead:
            return super().format_help()
        description, self.description = self.description, _LEAD_MARKER
        try:
            text = super().format_help()
        finally:
            self.description = description
        return text.replace(
            _LEAD_MARKER, f"{description}\n\n{self.lead}" if description else self.lead
        )

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        print(f"{PROG}: error: {condense_parser_error(message)}", file=sys.stderr)
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
    * ``--config`` also takes the name of a shipped config
      (:mod:`wd_lightning.config_files`), ``--help`` starts with this
      package's options (:data:`LEAD_OPTIONS`), and there is no ``predict``;
    * ``validate`` and ``test`` refuse to run without ``--ckpt_path``, which
      would score the untrained initial weights;
    * the run directory is claimed atomically
      (:class:`~wd_lightning.training.rundir.ClaimingTensorBoardLogger`), so runs
      started together in one folder never share one;
    * Lightning's model summary is off (the parameter-group report replaces
      it), checkpoints follow :func:`default_checkpoint` and carry the global
      random state (:class:`~wd_lightning.RandomStateCheckpoint`);
    * ``--ckpt_path`` is checked before anything is built: a missing,
      truncated or foreign file, or a checkpoint of another model, is a
      one-line :class:`~wd_lightning.core.errors.CheckpointError`;
    * a run that fails before its first optimizer step leaves no run directory
      (only the one it claimed is removed);
    * SIGTERM, or a first SIGINT (Ctrl+C), stops a fit after the current batch
      with a checkpoint, and raises :class:`~wd_lightning.TrainingInterruptedError`
      naming it (see :mod:`wd_lightning.training.interrupts`);
    * a fit ends with :func:`fit_summary`, printed by global rank zero.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"prog": program_name(), "description": DESCRIPTION})
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
        self._start_step = 0  # the global step the run starts from: the checkpoint's, or 0
        self._checkpoint_state: dict[str, Any] | None = None
        with InterruptGuard() as guard, quiet_interrupt_notices():
            try:
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
            except BaseException:
                discard_unstarted_run(getattr(self, "trainer", None), self._start_step)
                # Lightning reports an interrupted fit as SIGTERMException (SIGTERM, or
                # the guard's first SIGINT) or as SystemExit(1) (a KeyboardInterrupt).
                if guard.received is None:
                    raise
                raise TrainingInterruptedError(guard.received, *self._resume_point()) from None

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, with ``--config`` also taking the name of a shipped config."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning_version}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ActionConfigFile,
            help=_CONFIG_HELP,
        )
        return parser

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands but ``predict``, whose models here have no prediction step."""
        return {
            name: skip
            for name, skip in LightningCLI.subcommands().items()
            if name in ("fit", "validate", "test")
        }

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None or isinstance(args, (list, tuple)):
            # Parsed here rather than by Lightning, which warns about a list given
            # from a command line: --config NAME becomes the shipped file's path.
            argv = sys.argv[1:] if args is None else args
            self.config = parser.parse_args(resolve_config_arguments(argv))
        else:
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand in ("validate", "test") and not path:
            raise InvalidArgumentError(
                "--ckpt_path",
                path,
                f"the checkpoint of a trained run: {subcommand} without one would score the "
                "untrained initial weights (e.g. lightning_logs/version_0/checkpoints/last.ckpt)",
            )
        if is_local_path(path):
            # Lightning reads the file's hyper-parameters next, and the trainer restores
            # it only after creating the run directory; torch's errors on the way are
            # tracebacks about zip archives and pickle opcodes.
            checkpoint = read_checkpoint(path, "--ckpt_path")
            self._start_step = int(checkpoint.get("global_step", 0))
            self._checkpoint_state = checkpoint["state_dict"]

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A sweep logs its members' norms itself; the monitor is for single fits.
        if not getattr(self, "_adding_sweep", False):
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

        * Logger: a :class:`~wd_lightning.training.logging.BufferedTensorBoardLogger`
          (the same event files as Lightning's default TensorBoard logger, in
          ``<default_root_dir>/lightning_logs/version_N``, flushed every 2 s and
          at each epoch end instead of after every value) without its
          ``hp_metric = -1`` placeholder: the weight-norm monitor fills the
          HPARAMS tab with real final metrics.
        * Progress bar: a :class:`~wd_lightning.training.logging.TimedProgressBar`
          (redrawn at most twice a second), unless the bar is off or one is given.
        * Checkpoints: :func:`default_checkpoint` instead of a checkpoint after
          every epoch, unless checkpointing is off or a ModelCheckpoint is given.
        * :class:`~wd_lightning.RandomStateCheckpoint`, unless one is given, so
          that a resumed fit continues the interrupted fit's random streams.
        * No ``config.yaml`` when logging is off (``--trainer.logger false``):
          there is no run directory to put it in.
        """
        config = _config_value(self, self.config_init, "trainer", {})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            save_dir = config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = BufferedTensorBoardLogger(save_dir=save_dir, default_hp_metric=False)
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if isinstance(kwargs.get("logger"), BufferedTensorBoardLogger):
            callbacks.append(FlushLoggersAtEpochEnd())
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(callback, ProgressBar) for callback in callbacks
        ):
            callbacks.append(TimedProgressBar())
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(callback, ModelCheckpoint) for callback in callbacks
        ):
            callbacks.append(default_checkpoint())
        if not any(isinstance(callback, RandomStateCheckpoint) for callback in callbacks):
            callbacks.append(RandomStateCheckpoint())
        kwargs.setdefault("callbacks", [*callbacks, FitSummaryPrinter()])
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.logger is None:
            # Without a logger the config would go to the working directory itself, and
            # a second run there would fail on finding the first one's config.yaml.
            trainer.callbacks = [
                c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)
            ]
        return trainer

    # ------------------------------------------------------------------ sweep
    # Private LightningCLI hooks (see wd_lightning.training.compat.CLI_SUBCOMMAND_HOOKS):
    # the only way to add subcommands that are not Trainer methods.
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        description = _sentence(SUBCOMMANDS["sweep"])
        self._adding_sweep = True
        try:
            sweep_parser = self.init_parser(description=description)
            build_cli_arguments(self, sweep_parser)
        finally:
            self._adding_sweep = False
        add_sweep_arguments(sweep_parser)
        add_cli_subcommand(self, parser, "sweep", sweep_parser, help=description)
        for name, named_parser in cli_subcommand_parsers(self).items():
            # Argparse's usage would list all 200 options on 200 lines.
            named_parser.prog = f"{program_name()} {name}"
            named_parser.usage = "%(prog)s [--config NAME_OR_FILE] [options]"
            named_parser.lead = lead_help(name)
            # Lightning's are the Trainer methods' docstrings ("Runs the full optimization ...").
            named_parser.description = _sentence(SUBCOMMANDS[name])
        # Listed here for --help; ``main`` runs it before this parser is built.
        add_cli_subcommand(
            self,
            parser,
            "plot",
            ArgumentParser(),
            help=_sentence(SUBCOMMANDS["plot"]),
            runnable=False,
        )
        for choice in subcommand_choices(parser):  # check-optimizer: in main
            choice.help = _sentence(SUBCOMMANDS[choice.dest])

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "sweep":
            self.sweep()
        else:
            super()._run_subcommand(subcommand)

    def sweep(self) -> None:
        """Run ``sweep``: every (λ, seed) member of the grid, then the summary and figures."""
        # Imported here: fit, validate and test never need the sweep's modules.
        from wd_lightning.sweep.run import run_sweep

        config, trainer_config = self.config["sweep"], self.config_init["sweep"]["trainer"]
        try:
            result = run_sweep(
                model_builder(config["model"]),
                self.datamodule,
                weight_decays=config["weight_decays"],
                seeds=config["seeds"],
                output_dir=config["output_dir"],
                trainer_kwargs=dict(trainer_config),
                overwrite=config["overwrite"],
            )
        except ValueError as error:
            # Building a member from the config wraps the model's own errors.
            self._raise_as_option_error(error)
        if not result.is_global_zero:  # split across processes: rank zero reports
            return
        subcommand_parser(self, "sweep").save(
            config, result.output_dir / "config.yaml", skip_none=False, overwrite=True
        )
        print(result.table())
        if config["plot"]:
            draw_figures(result.output_dir)
        runs = result.output_dir / "runs"
        print(f"summary: {result.output_dir / 'summary.csv'}  (view: tensorboard --logdir {runs})")

    def _resume_point(self) -> tuple[int | None, str | None]:
        """The step an interrupted fit stopped at and its latest checkpoint (``None`` if absent)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None, None
        checkpoint = trainer.checkpoint_callback
        path = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
        return trainer.global_step, path if path and os.path.exists(path) else None

    def instantiate_classes(self) -> None:
        try:
            if self.subcommand == "sweep":
                # Instantiated once to check the config; each member is built anew.
                self.config_init = self.parser.instantiate_classes(self.config)
                self.datamodule = _config_value(self, self.config_init, "data")
                self.model = _config_value(self, self.config_init, "model")
            else:
                super().instantiate_classes()
        except ValueError as error:
            self._raise_as_option_error(error)
        except MisconfigurationException as error:
            # The Trainer's own checks, e.g. --trainer.max_epochs -5 or an absent accelerator.
            raise TrainerArgumentError("--trainer", None, str(error).splitlines()[0]) from None
        if self._checkpoint_state is not None:
            # Compared now, before the trainer makes a run directory and fails to restore it.
            state, self._checkpoint_state = self._checkpoint_state, None
            subcommand_config = self.config[self.subcommand]
            check_state_dict(
                self.model,
                state,
                subcommand_config.get("ckpt_path"),
                "--ckpt_path",
                # Models built in configure_model have no parameters yet: compare shapes only.
                strict=self.model.strict_loading
                and not is_overridden("configure_model", self.model, LightningModule),
            )

    def _raise_as_option_error(self, error: ValueError) -> NoReturn:
        """Re-raise the InvalidArgumentError behind ``error`` with the option's CLI name."""
        invalid = _find_cause(error, InvalidArgumentError)
        if invalid is None:
            raise error
        raise InvalidArgumentError(
            self._option_name(invalid.argument), invalid.value, invalid.allowed
        ) from None

    def _option_name(self, argument: str) -> str:
        """The command-line spelling of a constructor argument, e.g. ``--model.weight_decay``."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        head = argument.split(".")[0]
        if head in config or head == "trainer":
            return f"--{argument}"
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


def add_sweep_arguments(parser: ArgumentParser) -> None:
    """The options ``sweep`` has beyond those of ``fit``."""
    parser.add_argument(
        "--weight_decays",
        type=list[float],
        default=[0.0, 3.0],
        help="the λ values (replaces --model.weight_decay)",
    )
    parser.add_argument(
        "--seeds",
        type=list[int],
        default=[0],
        help="the seeds of the initial weights (replaces --seed_everything)",
    )
    parser.add_argument(
        "--output_dir", type=str, default="sweep_logs", help="where runs, tables and figures go"
    )
    parser.add_argument(
        "--overwrite", type=bool, default=False, help="replace an earlier sweep in --output_dir"
    )
    parser.add_argument("--plot", type=bool, default=True, help="also write the figures")


def model_builder(model_config: Namespace) -> Callable[[float], LightningModule]:
    """A function building the configured model with a given λ, as ``fit`` would build it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)

    def build(weight_decay: float) -> LightningModule:
        config = model_config.clone()
        if "weight_decay" not in config.get("init_args", {}):
            raise InvalidArgumentError(
                "model", config.get("class_path"), "a model with a weight_decay argument"
            )
        config.init_args.weight_decay = weight_decay
        return parser.instantiate_classes(Namespace(model=config)).model

    return build


def default_checkpoint() -> ModelCheckpoint:
    """``last.ckpt`` at the end of training, every 5 minutes of training, and on an exception.

    Lightning's default writes a checkpoint after every epoch: for the book's
    100 one-millisecond epochs that is most of the run's time, and for long
    epochs it is still only as often as an epoch ends. Time-based saving costs
    the same on both, ``save_last`` keeps a stable name to resume from
    (``--ckpt_path lightning_logs/version_N/checkpoints/last.ckpt``), and saving
    on an exception (including an interrupt) keeps the work done before it.
    """
    return GoodWeightsCheckpoint(
        save_last=True, train_time_interval=timedelta(minutes=5), save_on_exception=True
    )


class GoodWeightsCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves on an exception, except when training diverged.

    A diverged run's weights are not finite: saving them on the way out would
    replace ``last.ckpt``, the last good weights to resume from with a lower
    learning rate, by ones that cannot train at all.
    """

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, TrainingDivergedError):
            return
        super().on_exception(trainer, pl_module, exception)


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
    if trainer.logger is not None and trainer.log_dir:
        lines.append(
            f"logs: {trainer.log_dir}  (view: tensorboard --logdir {Path(trainer.log_dir).parent})"
        )
    return "\n".join(lines)


def _config_value(cli: LightningCLI, config: Namespace, key: str, default: Any = None) -> Any:
    """``key`` of the running subcommand's part of ``config`` (the whole config without one)."""
    return config.get(str(cli.subcommand), config).get(key, default)


def _find_cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``error``'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def plot(args: Sequence[str]) -> None:
    """Run ``plot``: draw the figures of an earlier sweep."""
    parser = OneLineErrorParser(
        prog=f"{PROG} plot",
        description="Draw a sweep's figures into <output_dir>/figures/ (PNG).",
    )
    parser.add_argument(
        "--output_dir", type=str, default="sweep_logs", help="the folder a sweep wrote"
    )
    parser.add_argument(
        "--weight_decays_shown",
        type=list[float] | None,
        default=None,
        help="λ values whose loss curves are drawn (default: 0 and 3, if swept)",
    )
    config = parser.parse_args(list(args))
    try:
        draw_figures(config.output_dir, config.weight_decays_shown)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"--{error.argument}", error.value, error.allowed) from None


def draw_figures(
    output_dir: str | Path, weight_decays_shown: Sequence[float] | None = None
) -> None:
    """Write a sweep's figures and print where they went (``sweep --plot`` and ``plot`` alike)."""
    # Imported here: only drawing needs matplotlib.
    from wd_lightning.sweep.plots import write_figures

    for path in write_figures(output_dir, weight_decays_shown):
        print(f"figure: {path}")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def program_name() -> str:
    """How the user started the program, for usage lines: ``python -m wd_lightning`` or its script.

    Example:
        >>> program_name() in ("wd-lightning", "python -m wd_lightning")
        True
    """
    started_as = Path(sys.argv[0])
    as_module = started_as.name == "__main__.py" and started_as.parent.name == "wd_lightning"
    return "python -m wd_lightning" if as_module else PROG


def overview() -> str:
    """What the bare command prints: the subcommands, the shipped configs, where help is."""
    prog = program_name()
    width = max(map(len, [*SUBCOMMANDS, *shipped_configs()]))
    lines = [f"{prog}: {DESCRIPTION}", "", "Subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Shipped configs (--config NAME):"]
    lines += [
        f"  {name:<{width}}  {describe_config(path)}" for name, path in shipped_configs().items()
    ]
    lines += [
        "",
        "The article's comparison:",
        f"  {prog} fit --config d2l_no_decay",
        f"  {prog} fit --config d2l_weight_decay",
        "",
        f"Options of a subcommand: {prog} <subcommand> --help",
    ]
    return "\n".join(lines)


def _release_process_group() -> None:
    """Tear down a finished multi-process run's process group, every rank together.

    Lightning leaves it to the interpreter's exit, where gloo's threads can be torn down
    under a peer still using them and abort the process after a successful run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(args: Sequence[str] | None = None) -> None:
    """Run the CLI.

    A user's mistake ends the process with a one-line message and exit code 2;
    a diverged run with exit code 1; an interrupted run with 128 + the signal's
    number (130 for SIGINT, 143 for SIGTERM) and the ``--ckpt_path`` to resume with.
    """
    # Lightning calls jsonargparse APIs that warn on every run; users cannot act on it.
    ignore_jsonargparse_deprecations()
    warnings.filterwarnings("ignore", message=r".*isinstance.treespec, LeafSpec.* is deprecated")
    # A resumed fit, validate and test log to a new version_N, so the checkpoint's folder
    # always differs from the run's: Lightning warns about it every time.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    argv = list(sys.argv[1:] if args is None else args)
    if not argv:
        print(overview())
        return
    try:
        if argv[:1] == ["plot"]:
            plot(argv[1:])
        elif argv[:1] == ["check-optimizer"]:
            from wd_lightning.testing.check_optimizer import check_optimizer

            raise SystemExit(check_optimizer(argv[1:], prog=f"{PROG} check-optimizer"))
        else:
            # args=None lets Lightning read sys.argv itself (it warns when given both).
            WeightDecayCLI(args=None if args is None else argv)
            _release_process_group()
    except InvalidArgumentError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDivergedError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingInterruptedError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
