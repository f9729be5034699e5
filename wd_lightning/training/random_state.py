"""Checkpoint the global random generators: a resumed fit draws what the whole fit would have.

Lightning's checkpoints hold the weights, the optimizer and the loops' progress,
but not the state of the global generators. A model that draws random numbers
while it trains (dropout, noise injection, random augmentation on the device)
would therefore continue a resumed fit from the seed's state rather than from
where the interrupted fit stood, and the two runs would part ways.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch import Callback

__all__ = ["RandomStateCheckpoint", "get_random_state", "set_random_state"]


def get_random_state() -> dict[str, Any]:
    """The state of Python's, NumPy's (if installed) and torch's (CPU and CUDA) global generators.

    Everything is a tensor, a number, a string or a tuple of them, so a
    checkpoint holding it still loads with ``torch.load(..., weights_only=True)``.

    Example:
        >>> state = get_random_state()
        >>> first = torch.rand(2), random.random()
        >>> set_random_state(state)
        >>> second = torch.rand(2), random.random()
        >>> torch.equal(first[0], second[0]) and first[1] == second[1]
        True
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    # As a tensor: a NumPy array would make the checkpoint unloadable with weights_only.
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_random_state` returned; generators it lacks are left alone."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    # A checkpoint from a machine with another number of GPUs (or none) cannot
    # place its CUDA states; the CPU-side generators still continue exactly.
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is optional
            return
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


class RandomStateCheckpoint(Callback):
    """Saves the global random state with every checkpoint and restores it on resume.

    With it, a fit resumed from a checkpoint continues the random streams of
    the interrupted fit, so a model with dropout trains bit for bit as the
    uninterrupted fit would (on the same device, software and configuration).
    The ``wd-lightning`` command line always adds it.

    The state is that of the process which writes the checkpoint (global rank
    zero); every process of a multi-process fit restores it.

    Example:
        >>> callback = RandomStateCheckpoint()
        >>> saved = callback.state_dict()
        >>> first = torch.rand(3)
        >>> callback.load_state_dict(saved)
        >>> torch.equal(torch.rand(3), first)
        True
    """

    def state_dict(self) -> dict[str, Any]:
        return get_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_state(state_dict)
