"""``wd-lightning check-optimizer MODULE:CLASS``: vet an optimizer's weight decay from a shell.

Prints what :func:`~wd_lightning.testing.identify_weight_decay` finds, e.g.::

    $ python -m wd_lightning check-optimizer torch.optim:AdamW
    AdamW: weight decay is decoupled
      run with float64, 0- to 2-d parameters; 20 examples

The exit code is 0 when a named contract held and 1 when none did, so a script can use it.
Mistakes in the command line raise :class:`~wd_lightning.core.errors.InvalidArgumentError`,
which the command line prints as one line.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from wd_lightning.core.errors import InvalidArgumentError

__all__ = ["CommandLineError", "check_optimizer", "parse_kwargs", "resolve_optimizer"]

_SPEC_FORM = "PACKAGE.MODULE:CLASS, e.g. torch.optim:AdamW"


class CommandLineError(InvalidArgumentError):
    """A command line argparse rejects, worded as argparse words it, on one line."""

    def describe(self) -> str:
        return f"{self.argument}: {self.allowed}"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake raises an error the CLI prints on one line, without usage."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(self.prog, None, message)


def resolve_optimizer(spec: str) -> Callable[..., Any]:
    """The optimizer class named by ``PACKAGE.MODULE:CLASS``.

    Raises:
        InvalidArgumentError: if the spec is malformed, the module cannot be imported, or it
            has no such callable.

    Example:
        >>> resolve_optimizer("torch.optim:SGD").__name__
        'SGD'
        >>> try:
        ...     resolve_optimizer("torch.optim.SGD")
        ... except InvalidArgumentError as error:
        ...     print(error.allowed)
        PACKAGE.MODULE:CLASS, e.g. torch.optim:AdamW
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise InvalidArgumentError("optimizer", spec, _SPEC_FORM)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's to fix, in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InvalidArgumentError(
            "optimizer", spec, f"an importable module ({type(error).__name__}: {reason})"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise InvalidArgumentError(
                "optimizer", spec, f"a class that exists in {module_name} (no {attribute!r})"
            )
        found = getattr(found, part)
    if not callable(found):
        raise InvalidArgumentError("optimizer", spec, "a class or function to build optimizers")
    return found


def parse_kwargs(text: str, option: str) -> dict[str, Any]:
    """A JSON object of keyword arguments; JSON lists become tuples (as ``betas`` expects).

    Example:
        >>> parse_kwargs('{"betas": [0.9, 0.99], "foreach": false}', "--kwargs")
        {'betas': (0.9, 0.99), 'foreach': False}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(
            option, text, f"a JSON object such as '{{\"momentum\": 0.9}}' ({error.msg})"
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(option, text, "a JSON object such as '{\"momentum\": 0.9}'")
    return {key: _tuples(item) for key, item in value.items()}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def check_optimizer(args: Sequence[str], *, prog: str = "check-optimizer") -> int:
    """Run the command: print the identification and return the exit code.

    Example:
        >>> check_optimizer(["torch.optim:Adam", "--examples", "5"])
        Adam: weight decay is coupled
          run with float64, 0- to 2-d parameters; 5 examples
        0
    """
    parser = _OneLineParser(
        prog=prog,
        description=(
            "Find out which weight-decay rule an optimizer implements (coupled, decoupled, "
            "independent, ...) by property-testing it against twin runs with weight_decay=0."
        ),
    )
    parser.add_argument("optimizer", help=f"the optimizer, as {_SPEC_FORM}")
    parser.add_argument(
        "--kwargs", default="{}", help="constructor arguments as a JSON object (not lr)"
    )
    parser.add_argument(
        "--group-options",
        default="{}",
        help="entries every parameter group needs, as a JSON object",
    )
    parser.add_argument("--examples", type=int, default=20, help="examples to run (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the examples (default 0)")
    config = parser.parse_args(list(args))
    factory = resolve_optimizer(config.optimizer)
    kwargs = parse_kwargs(config.kwargs, "--kwargs")
    if {"params", "lr", "weight_decay"} & set(kwargs):
        raise InvalidArgumentError(
            "--kwargs", config.kwargs, "no params, lr or weight_decay: the check sets them"
        )
    group_options = parse_kwargs(config.group_options, "--group-options")
    if config.examples < 1:
        raise InvalidArgumentError("--examples", config.examples, "an int >= 1")
    if config.seed < 0:
        raise InvalidArgumentError("--seed", config.seed, "an int >= 0")
    from wd_lightning.testing.identify import identify_weight_decay

    try:
        report = identify_weight_decay(
            factory,
            optimizer_kwargs=kwargs,
            group_options=group_options,
            max_examples=config.examples,
            seed=config.seed,
        )
    except ValueError as error:
        raise CommandLineError(prog, None, str(error)) from None
    print(report)
    return 0 if report.contracts else 1
