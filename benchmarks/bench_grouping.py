"""How long ``explain_param_groups`` takes, and whether it grows linearly in tensors.

Four workloads, each built on the meta device (no memory for weights):

* timm ``mvitv2_small`` (380 tensors, with ``no_weight_decay()`` declarations);
* a Hugging Face speech encoder: ``Wav2Vec2ConformerModel`` with 35 layers
  (1,209 tensors);
* a stack of 32,000 small layers (``Linear(4, 4)``: 64,000 tensors);
* 4,000 modules that each declare a parameter in ``no_weight_decay()`` (the
  shape that made a names × declarations scan quadratic).

For each synthetic workload it also times a quarter of the size: linear
growth shows as a ratio near 4 (the ratio, not the absolute time, is what
carries over between machines). The timm and Hugging Face rows need the
``zoo`` extra and are skipped without it.

Usage::

    python benchmarks/bench_grouping.py            # a few seconds, plus model building
    python benchmarks/bench_grouping.py --repeats 5

Prints a Markdown table: workload, tensors, median seconds, and the ratio of
the full size to a quarter of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wd_lightning.core.grouping import explain_param_groups


class _Declares(nn.Module):
    """A block that declares its own token, as ViT-style blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 4))
        self.proj = nn.Linear(4, 4)

    def no_weight_decay(self) -> set[str]:
        return {"token"}


def stack_of_layers(count: int) -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(*(nn.Linear(4, 4) for _ in range(count)))


def declaring_modules(count: int) -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(*(_Declares() for _ in range(count)))


def timm_mvitv2_small() -> nn.Module | None:
    try:
        from tests.core.real_models import timm_model

        return timm_model("mvitv2_small")
    except ImportError:
        return None


def hf_speech_encoder() -> nn.Module | None:
    try:
        import transformers
    except ImportError:
        return None
    config = transformers.Wav2Vec2ConformerConfig(num_hidden_layers=35)
    with torch.device("meta"):
        return transformers.Wav2Vec2ConformerModel(config)


def median_seconds(model: nn.Module, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain_param_groups(model, 0.1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rows = ["| workload | tensors | median s | full / quarter |", "|---|---|---|---|"]
    real: list[tuple[str, Callable[[], nn.Module | None]]] = [
        ("timm mvitv2_small", timm_mvitv2_small),
        ("HF Wav2Vec2Conformer, 35 layers", hf_speech_encoder),
    ]
    for label, build in real:
        model = build()
        if model is None:
            rows.append(f"| {label} | (needs the zoo extra) | | |")
            continue
        tensors = len(list(model.parameters()))
        rows.append(f"| {label} | {tensors:,} | {median_seconds(model, args.repeats):.4f} | |")
    synthetic = [
        ("32,000 Linear(4, 4) layers", stack_of_layers, 32_000),
        ("4,000 declaring modules", declaring_modules, 4_000),
    ]
    for label, build, count in synthetic:
        full, quarter = build(count), build(count // 4)
        full_s = median_seconds(full, args.repeats)
        quarter_s = median_seconds(quarter, args.repeats)
        tensors = len(list(full.parameters()))
        rows.append(f"| {label} | {tensors:,} | {full_s:.4f} | {full_s / quarter_s:.2f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
