"""Reading checkpoint files safely, and saying in one line what is wrong with one that is not.

``torch.load`` reports a truncated file, a text file or a bare ``state_dict``
in its own internal terms (a miniz error, ``KeyError: 101``, a missing
``'pytorch-lightning_version'``), often several calls deep inside Lightning.
:func:`read_checkpoint` checks the file before anything else uses it and
raises :class:`~wd_lightning.core.errors.CheckpointError` naming the path and what
was expected instead.

Files are read with ``weights_only=True``: torch's restricted unpickler, which
builds tensors, containers and plain Python values but imports and calls
nothing named by the file, so reading an untrusted checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wd_lightning.core.errors import CheckpointError

__all__ = ["check_state_dict", "is_local_path", "read_checkpoint"]

# What every checkpoint Lightning writes holds, whatever the model.
_LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# Special values of ``ckpt_path`` that Lightning resolves itself; they are not file names.
_SPECIAL_PATHS = ("last", "best", "hpc")
# torch's own words for a foreign file are internal (a pickle opcode, a miniz error).
_NOT_TORCH_SAVE = "a checkpoint written by torch.save; this file is not one"


def is_local_path(path: Any) -> bool:
    """Whether ``path`` names a local file: not a URL, a registry or one of Lightning's keywords.

    Example:
        >>> is_local_path("runs/last.ckpt"), is_local_path("last"), is_local_path("s3://b/x.ckpt")
        (True, False, False)
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    return (
        bool(text)
        and "://" not in text
        and text not in _SPECIAL_PATHS
        and (not text.startswith("registry"))
    )


def read_checkpoint(
    path: str | os.PathLike, argument: str = "checkpoint_path", weights_only: bool = True
) -> dict[str, Any]:
    """Load a Lightning checkpoint for inspection, or raise a one-line error saying why not.

    The tensors are memory-mapped, not read: checking a checkpoint costs its
    metadata, not its size.

    Args:
        path: the checkpoint file.
        argument: how the caller names ``path`` in the error (``"--ckpt_path"``).
        weights_only: torch's safe loading; ``False`` unpickles anything, so
            only for files you trust.

    Returns:
        The checkpoint's dictionary, tensors on the CPU.

    Raises:
        CheckpointError: no such file, a directory, an empty, truncated or
            foreign file, or objects that safe loading refuses.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save(torch.zeros(3), f"{folder}/tensor.pt")
        ...     read_checkpoint(f"{folder}/tensor.pt", "--ckpt_path")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        wd_lightning.core.errors.CheckpointError: --ckpt_path='.../tensor.pt' ... holds a Tensor
    """
    shown = os.fspath(path)

    def refuse(allowed: str) -> CheckpointError:
        return CheckpointError(argument, shown, allowed)

    if not os.path.exists(path):
        raise refuse("a checkpoint file: no such file")
    if os.path.isdir(path):
        raise refuse("a checkpoint file: this is a directory")
    if os.path.getsize(path) == 0:
        raise refuse("a checkpoint file: this file is empty")
    is_zip = zipfile.is_zipfile(path)
    try:
        # mmap needs torch's zip format; older-format files are read the ordinary way.
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=is_zip)
    except pickle.UnpicklingError as error:
        # A real pickle naming a class is refused by name; other refusals ("Unsupported
        # operand") are what any non-pickle file gives.
        unsafe = _UNSAFE_GLOBAL.search(str(error))
        if weights_only and unsafe:
            raise refuse(
                f"a checkpoint that loads with weights_only=True: it holds {unsafe.group(1)}, "
                "which safe loading refuses; load it with weights_only=False only if you trust "
                "the file"
            ) from None
        raise refuse(_NOT_TORCH_SAVE) from None
    except Exception:
        if not is_zip and _starts_like_a_zip(path):
            raise refuse(
                "a complete checkpoint file: this one ends early or is damaged (its zip "
                "archive has no central directory); was it copied or written completely?"
            ) from None
        raise refuse(_NOT_TORCH_SAVE) from None
    if not isinstance(checkpoint, Mapping) or not all(key in checkpoint for key in _LIGHTNING_KEYS):
        keys = " and ".join(repr(key) for key in _LIGHTNING_KEYS)
        raise refuse(
            f"a Lightning checkpoint (a dict with {keys}); this file holds {_kind(checkpoint)}"
        )
    return dict(checkpoint)


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    path: str | os.PathLike,
    argument: str = "checkpoint_path",
    strict: bool = True,
) -> None:
    """Raise :class:`CheckpointError` if ``state_dict`` does not fit ``module``: names and shapes.

    The first disagreement is named; with ``strict=False`` only the shapes of
    the names both have are compared, as ``load_state_dict(strict=False)`` would.

    Example:
        >>> from torch import nn
        >>> check_state_dict(nn.Linear(3, 1), nn.Linear(3, 1).state_dict(), "a.ckpt")
        >>> check_state_dict(nn.Linear(3, 1), nn.Linear(4, 1).state_dict(), "a.ckpt")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        wd_lightning.core.errors.CheckpointError: ... weight has shape [1, 4] in the checkpoint ...
    """
    own = module.state_dict()
    problem = None
    for name, tensor in own.items():
        saved = state_dict.get(name)
        if saved is None:
            if strict:
                problem = f"the model has {name}, which the checkpoint lacks"
                break
            continue
        if isinstance(saved, torch.Tensor) and saved.shape != tensor.shape:
            problem = (
                f"{name} has shape {list(saved.shape)} in the checkpoint "
                f"and {list(tensor.shape)} in the model"
            )
            break
    if problem is None and strict:
        extra = next((name for name in state_dict if name not in own), None)
        if extra is not None:
            problem = f"the checkpoint has {extra}, which the model lacks"
    if problem is not None:
        raise CheckpointError(argument, os.fspath(path), f"a checkpoint of this model: {problem}")


def _starts_like_a_zip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = list(value)
        shown = ", ".join(repr(key) for key in keys[:3]) + (", ..." if len(keys) > 3 else "")
        hint = ""
        if keys and all(isinstance(v, torch.Tensor) for v in value.values()):
            # torch.save(model.state_dict()): weights without the trainer's state.
            hint = " (a bare state_dict: load it with model.load_state_dict(torch.load(path)))"
        return f"a dict with keys {shown}{hint}" if keys else "an empty dict"
    return f"a {type(value).__name__}"
