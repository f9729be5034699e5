"""Public names imported on first use, declared once per package in a module → names table.

``import wd_lightning`` (and the pytest plugin, which every pytest run of a project with this
package installed loads) must not pay for importing Lightning and torch up front; a name's
module is imported the first time the name is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], table: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package`` from ``{module: names}``.

    Args:
        package: the package's ``__name__``; error messages name it.
        namespace: the package's ``globals()``; a looked-up name is stored there, so later
            look-ups skip ``__getattr__``.
        table: each module (absolute) with the public names it defines.

    Example:
        >>> names, getattr_, _ = lazy_exports("demo", {}, {"math": ("pi",)})
        >>> names, round(getattr_("pi"), 2)
        (['pi'], 3.14)
    """
    module_of = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return sorted(module_of), __getattr__, __dir__
