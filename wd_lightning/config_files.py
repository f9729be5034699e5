"""The configs shipped inside the package, found by name: ``--config d2l_weight_decay``.

The YAML files live in ``wd_lightning/configs/`` (``configs/`` in a clone of
the repository is the same folder), so they are installed with the wheel and a
bare name works from any directory. A value that names an existing file, or
looks like a path, is left for the parser to read as a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from wd_lightning.core.errors import InvalidArgumentError

__all__ = ["describe_config", "resolve_config_arguments", "resolve_config_name", "shipped_configs"]

_CONFIG_OPTIONS = ("--config", "-c")


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (the file name without ``.yaml``), sorted.

    Example:
        >>> {"d2l_no_decay", "d2l_weight_decay", "sweep"} <= set(shipped_configs())
        True
    """
    folder = Path(str(resources.files("wd_lightning") / "configs"))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def describe_config(path: Path) -> str:
    """The first line of a config's leading comment: what the config is for.

    Example:
        >>> describe_config(shipped_configs()["d2l_weight_decay"])
        "The article's experiment with weight decay: λ = 3 on the same model and data."
    """
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("# ").strip():
            return line.lstrip("# ").strip()
    return ""


def resolve_config_name(value: str) -> str:
    """The file a ``--config`` value means: itself, or the shipped config it names.

    Raises:
        InvalidArgumentError: ``value`` is a bare name (no folder, no extension)
            that is neither a file nor a shipped config.

    Example:
        >>> Path(resolve_config_name("d2l_weight_decay")).name
        'd2l_weight_decay.yaml'
        >>> resolve_config_name("my_run.yaml")
        'my_run.yaml'
    """
    path = Path(value)
    if path.exists() or path.suffix or len(path.parts) != 1 or value.lstrip().startswith("{"):
        return value
    configs = shipped_configs()
    if value in configs:
        return str(configs[value])
    raise InvalidArgumentError(
        "--config", value, f"a YAML file or a shipped config: {', '.join(configs)}"
    )


def resolve_config_arguments(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config NAME`` (or ``-c NAME``, ``--config=NAME``) resolved.

    Example:
        >>> subcommand, config = resolve_config_arguments(["fit", "--config=sweep"])
        >>> subcommand, config.startswith("--config=/"), Path(config).name
        ('fit', True, 'sweep.yaml')
    """
    resolved = list(args)
    for index, arg in enumerate(resolved):
        option, equals, value = arg.partition("=")
        if option in _CONFIG_OPTIONS and equals:
            resolved[index] = f"{option}={resolve_config_name(value)}"
        elif arg in _CONFIG_OPTIONS and index + 1 < len(resolved):
            resolved[index + 1] = resolve_config_name(resolved[index + 1])
    return resolved
