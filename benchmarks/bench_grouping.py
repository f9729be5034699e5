"""How long ``explain_param_groups`` takes, and whether it grows linearly in tensors.

Four workloads, each built on the meta device (no memory for weights):

* timm ``mvitv2_small`` (380 tensors, with ``no_weight_decay()`` declarations);
* a Hugging Face speech encoder: ``Wav2Vec2ConformerModel`` with 35 layers
  (1,209 tensors);
* a stack of 32,000 small layers (``Linear(4, 4)``: 64,000 tensors);
* 4,000 modules that each declare a parameter in ``no_weight_decay()`` (the
  shape that made a names × declarations scan quadratic).

Two ratios carry over between machines where absolute times do not: the
grouping's time over that of listing ``model.named_parameters()`` (the least
any grouping must do), and for the synthetic workloads the time at full size
over the time at a quarter of it (linear growth: near 4). The timm and Hugging Face rows need the
``zoo`` extra and are skipped without it.

Usage::

    python benchmarks/bench_grouping.py            # a few seconds, plus model building
    python benchmarks/bench_grouping.py --repeats 5
    git show 35201ba:wd_lightning/core/grouping.py > /tmp/old_grouping.py
    python benchmarks/bench_grouping.py --baseline /tmp/old_grouping.py

Prints a Markdown table: workload, tensors, median seconds, and both ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_baseline(path: Path) -> Callable[..., object]:
    """``explain_param_groups`` from another version of core/grouping.py, to compare."""
    spec = importlib.util.spec_from_file_location("baseline_grouping", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.explain_param_groups


def row(
    label: str,
    model: nn.Module,
    repeats: int,
    quarter: nn.Module | None = None,
    baseline: Callable[..., object] | None = None,
) -> str:
    """Seconds, the yardstick ratio, the growth ratio, and the baseline's seconds."""
    grouping = median_seconds(lambda: explain_param_groups(model, 0.1), repeats)
    listing = median_seconds(lambda: list(model.named_parameters()), repeats)
    growth = ""
    if quarter is not None:
        growth = (
            f"{grouping / median_seconds(lambda: explain_param_groups(quarter, 0.1), repeats):.2f}"
        )
    before = ""
    if baseline is not None:
        before = f"{median_seconds(lambda: baseline(model, 0.1), repeats):.4f}"
    tensors = len(list(model.parameters()))
    return (
        f"| {label} | {tensors:,} | {grouping:.4f} | {grouping / listing:.1f} | {growth} "
        f"| {before} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another grouping.py to time beside this one, e.g. from "
        "`git show <commit>:wd_lightning/core/grouping.py > old.py`",
    )
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None

    rows = [
        "| workload | tensors | median s | × named_parameters() | full / quarter | baseline s |",
        "|---|---|---|---|---|---|",
    ]
    real: list[tuple[str, Callable[[], nn.Module | None]]] = [
        ("timm mvitv2_small", timm_mvitv2_small),
        ("HF Wav2Vec2Conformer, 35 layers", hf_speech_encoder),
    ]
    for label, build in real:
        model = build()
        if model is None:
            rows.append(f"| {label} | (needs the zoo extra) | | | | |")
            continue
        rows.append(row(label, model, args.repeats, baseline=baseline))
    synthetic = [
        ("32,000 Linear(4, 4) layers", stack_of_layers, 32_000),
        ("4,000 declaring modules", declaring_modules, 4_000),
    ]
    for label, build, count in synthetic:
        quarter = build(count // 4)
        rows.append(row(label, build(count), args.repeats, quarter=quarter, baseline=baseline))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
