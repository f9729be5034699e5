"""What ``identify_weight_decay`` reports for torch.optim and a pinned set of other libraries.

Run ``python examples/optimizer_survey.py`` to print the table of docs/optimizer-rules.md
("Which decay rule does my optimizer follow?"); optimizers from a library that is not
installed are left out. The test suite checks every row against the rule each optimizer documents
(``tests/testing/test_optimizer_survey.py``) and that the table in the docs is current.

Versions surveyed: those pinned by the ``optimizers`` extra in ``pyproject.toml``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wd_lightning.testing import DecayIdentification, identify_weight_decay

#: Examples per optimizer: enough for every rule in the table to be told apart.
EXAMPLES = 10


@dataclass(frozen=True)
class Entry:
    """One optimizer configuration and the rule its documentation states."""

    library: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: What the optimizer's documentation or code comments say; "none" if it takes no decay.
    documented: str = "coupled"
    #: What the kit reports, where it differs from the documentation (``finding`` says why).
    reported: str = ""
    #: A defect or surprise the kit found, shown in the table's notes.
    finding: str = ""
    group_options: dict[str, Any] = field(default_factory=dict)
    examples: int = EXAMPLES

    @property
    def expected(self) -> str:
        """What the kit must report: the documented rule unless a finding says otherwise."""
        return self.reported or self.documented

    @property
    def label(self) -> str:
        options = [f"{k}={v!r}" for k, v in self.kwargs.items()]
        options += [f"groups with {k}={v!r}" for k, v in self.group_options.items()]
        return f"`{self.library}.{self.name}`" + (f" ({', '.join(options)})" if options else "")


def _torch(name: str, documented: str, *variants: dict[str, Any], **extra: Any) -> list[Entry]:
    return [Entry("torch.optim", name, kwargs, documented, **extra) for kwargs in ({}, *variants)]


_NO_DECAY = "takes no weight_decay"

TORCH = [
    *_torch(
        "SGD",
        "coupled",
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.9, "maximize": True},
        {"momentum": 0.9, "foreach": False},
        {"fused": True},
    ),
    *_torch(
        "Adam",
        "coupled",
        {"amsgrad": True},
        {"foreach": False},
        {"fused": True},
        {"maximize": True},
    ),
    Entry("torch.optim", "Adam", {"decoupled_weight_decay": True}, "decoupled"),
    *_torch("AdamW", "decoupled", {"amsgrad": True}, {"foreach": False}, {"fused": True}),
    *_torch("NAdam", "coupled", {"foreach": False}, {"maximize": True}),
    Entry("torch.optim", "NAdam", {"decoupled_weight_decay": True}, "decoupled"),
    *_torch("RAdam", "coupled", {"foreach": False}),
    Entry("torch.optim", "RAdam", {"decoupled_weight_decay": True}, "decoupled"),
    *_torch("Adagrad", "coupled", {"foreach": False}, {"fused": True}),
    *_torch("Adamax", "coupled", {"foreach": False}),
    *_torch("Adadelta", "coupled", {"foreach": False}),
    *_torch("RMSprop", "coupled", {"centered": True, "momentum": 0.9}, {"foreach": False}),
    *_torch("ASGD", "coupled", {"foreach": False}),
    *_torch("Adafactor", "decoupled", {"foreach": True}),
    Entry("torch.optim", "Muon", {}, "decoupled", examples=3),
    Entry("torch.optim", "LBFGS", {}, _NO_DECAY),
    Entry("torch.optim", "Rprop", {}, _NO_DECAY),
    Entry("torch.optim", "SparseAdam", {}, _NO_DECAY),
]

_CONSTRUCTOR_MAX_LR = "the max lr is the constructor's lr, not the group's"

THIRD_PARTY = [
    Entry("lion_pytorch", "Lion", {}, "decoupled"),
    Entry("pytorch_optimizer", "AdamP", {}, "adaptive"),
    Entry("pytorch_optimizer", "Adan", {}, "proximal"),
    Entry("pytorch_optimizer", "Lamb", {}, "decoupled"),
    Entry("pytorch_optimizer", "LaProp", {}, "decoupled-after"),
    Entry("pytorch_optimizer", "Lion", {}, "decoupled"),
    Entry("pytorch_optimizer", "AdaBelief", {}, "decoupled"),
    Entry("pytorch_optimizer", "AdaBelief", {"weight_decouple": False}, "coupled"),
    Entry("pytorch_optimizer", "AdaBelief", {"fixed_decay": True}, "independent"),
    Entry("pytorch_optimizer", "DAdaptSGD", {}, "coupled"),
    Entry("pytorch_optimizer", "Prodigy", {}, "adaptive"),
    Entry("pytorch_optimizer", "AdamC", {}, "decoupled"),
    Entry(
        "pytorch_optimizer",
        "AdamC",
        {},
        "corrected-max",
        reported="adaptive",
        finding=_CONSTRUCTOR_MAX_LR,
        group_options={"normalized": True},
    ),
    Entry("pytorch_optimizer", "MADGRAD", {}, "coupled"),
    Entry(
        "pytorch_optimizer",
        "RAdam",
        {},
        "decoupled",
        reported="none",
        finding="no decay on the first steps, while the rectification makes no update",
    ),
    Entry("pytorch_optimizer", "ScheduleFreeSGD", {}, "coupled"),
    Entry("pytorch_optimizer", "SignSGD", {}, "decoupled"),
    Entry(
        "pytorch_optimizer",
        "A2Grad",
        {},
        _NO_DECAY,
        reported="ignores weight_decay",
        finding="accepts weight_decay without an error, and ignores it",
    ),
    Entry("torch_optimizer", "AdaBound", {}, "coupled"),
    Entry("torch_optimizer", "AdaMod", {}, "decoupled"),
    Entry("torch_optimizer", "DiffGrad", {}, "coupled"),
    Entry("torch_optimizer", "Yogi", {}, "coupled"),
    Entry("torch_optimizer", "QHAdam", {}, "coupled"),
    Entry(
        "torch_optimizer",
        "RAdam",
        {},
        "decoupled",
        finding="float64 parameters are updated in float32",
    ),
    Entry(
        "torch_optimizer",
        "SGDW",
        {},
        "decoupled",
        reported="none",
        finding="subtracts lr·λ from every weight instead of lr·λ·w",
    ),
    Entry("timm.optim", "AdamWLegacy", {}, "decoupled"),
    Entry(
        "timm.optim",
        "AdamWLegacy",
        {"corrected_weight_decay": True},
        "corrected-max",
        reported="adaptive",
        finding=_CONSTRUCTOR_MAX_LR,
    ),
    Entry("timm.optim", "Lion", {}, "decoupled"),
    Entry("timm.optim", "NAdamW", {}, "decoupled"),
    Entry("timm.optim", "Adan", {}, "proximal"),
    Entry("timm.optim", "SGDW", {}, "decoupled"),
]

ENTRIES = TORCH + THIRD_PARTY


def _timm_optimizers() -> types.ModuleType | None:
    """timm's optimizer package, even where ``import timm`` fails for want of torchvision.

    ``import timm.optim`` runs ``timm/__init__.py``, which imports its model layers and
    through them torchvision; the optimizer modules themselves need only torch. Where that
    import fails, the optimizer folder is loaded as a package of its own.
    """
    try:
        return importlib.import_module("timm.optim")
    except ImportError:
        pass
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return None
    name = "_timm_optimizers_without_models"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(spec.origin).parent / "optim")]
        sys.modules[name] = package
    return sys.modules[name]


def factory(entry: Entry) -> Callable[..., torch.optim.Optimizer] | None:
    """The optimizer class of ``entry``, or ``None`` if its library is not installed."""
    if entry.library == "timm.optim":
        package = _timm_optimizers()
        if package is None:
            return None
        if package.__name__ == "timm.optim":
            return getattr(package, entry.name)
        module = {"AdamWLegacy": "adamw", "Lion": "lion", "NAdamW": "nadamw", "Adan": "adan"}
        module = {**module, "SGDW": "sgdw"}
        return getattr(
            importlib.import_module(f"{package.__name__}.{module[entry.name]}"), entry.name
        )
    try:
        return getattr(importlib.import_module(entry.library), entry.name)
    except ImportError:
        return None


@functools.cache
def identify(index: int) -> DecayIdentification | None:
    """The report for ``ENTRIES[index]`` (cached: the tests and the table share it)."""
    entry = ENTRIES[index]
    optimizer = factory(entry)
    if optimizer is None:
        return None
    return identify_weight_decay(
        optimizer,
        optimizer_kwargs=entry.kwargs,
        group_options=entry.group_options,
        max_examples=entry.examples,
    )


def reported(report: DecayIdentification) -> str:
    """What the table says the optimizer does."""
    if not report.contracts and any("weight_decay" in p for p in report.problems):
        return _NO_DECAY if "does not accept" in report.problems[0] else "ignores weight_decay"
    return report.verdict


def _notes(report: DecayIdentification) -> str:
    notes = []
    if "matrices only" in report.setup:
        notes.append("2-d only")
    if "float32" in report.setup:
        notes.append("holds in float32 only")
    if any(note.startswith("writes into .grad") for note in report.notes):
        notes.append("writes into `.grad`")
    notes += [note.split(" (")[0] for note in report.notes if note.startswith("made its first")]
    return "; ".join(notes)


def table(entries: range | None = None) -> str:
    """The docs' table, for every entry whose library is installed."""
    rows = [
        "| optimizer | documented | `identify_weight_decay` reports | notes |",
        "|---|---|---|---|",
    ]
    for index in entries if entries is not None else range(len(ENTRIES)):
        report = identify(index)
        if report is None:
            continue
        entry = ENTRIES[index]
        notes = "; ".join(part for part in (_notes(report), entry.finding) if part)
        rows.append(f"| {entry.label} | {entry.documented} | {reported(report)} | {notes} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
