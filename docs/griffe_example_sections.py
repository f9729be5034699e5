"""A griffe extension for the API reference: ``Example:`` read as Google's ``Examples:`` section.

The package's docstrings head their doctests ``Example:``, which griffe would
render as an admonition of plain text: the ``>>>`` lines would lose their code
formatting, and outputs such as ``[0.0, 1.0]`` would read as Markdown links.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrites a docstring's ``Example:`` heading to ``Examples:`` when its object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
