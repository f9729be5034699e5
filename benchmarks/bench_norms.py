"""What WeightNormMonitor costs per logged step, on a GPT-2-small-shaped model.

Measured in one invocation, on one device, medians of ``--repeats`` warm runs:

* the training step alone (forward, backward, AdamW step);
* the monitor's work on a logging step: fused norms of every parameter, the
  group norms and total, and the one host synchronisation that reads them
  (exactly the code the callback runs), with and without the update ratio;
* the naive way: ``p.norm().item()`` for every parameter, one sync each;
* the memory-bandwidth bound of reading every parameter once, from a large
  tensor copy timed in the same run.

The model has GPT-2 small's 148 parameter tensors (124.4M parameters, the token
embedding tied to the output head). On a CPU a full-size training step is slow,
so the default batch is 1 × 64 tokens; on a GPU pass e.g. ``--batch 16 --seq
1024 --autocast-bf16``.

Usage::

    python benchmarks/bench_norms.py                      # CPU, about 2 minutes on 2 cores
    python benchmarks/bench_norms.py --device cuda --batch 16 --seq 1024 --autocast-bf16
    python benchmarks/bench_norms.py --dry-run            # a tiny model through every path

Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wd_lightning.core.grouping import param_groups  # noqa: E402
from wd_lightning.core.norms import snapshot, squared_distances, squared_norms  # noqa: E402
from wd_lightning.training.callbacks import _Plan  # noqa: E402


# ------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.attn_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """GPT-2's parameter shapes: wte, wpe, ``layers`` blocks, ln_f; the head tied to wte."""

    def __init__(self, layers: int = 12, width: int = 768, heads: int = 12) -> None:
        super().__init__()
        self.wte = nn.Embedding(50257, width)
        self.wpe = nn.Embedding(1024, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


# ----------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def copy_bandwidth(device: torch.device, megabytes: int, repeats: int) -> float:
    """Bytes per second of a large device-to-device copy (each byte read once, written once)."""
    source = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device, repeats, warmup=2)
    return 2 * source.numel() * 4 / (ms / 1000)


# ------------------------------------------------------------------ cases
def monitor_logging_step(plan: _Plan) -> Callable[[], list[float]]:
    """The callback's work on a logging step: fused norms, groups, total, one host sync."""

    def run() -> list[float]:
        squares = squared_norms(plan.tensors)
        values = torch.cat([plan.group_norms(squares), squares.sum().sqrt()[None]])
        return values.tolist()

    return run


def monitor_with_update_ratio(plan: _Plan) -> Callable[[], None]:
    """The logging step plus the update ratio: a snapshot, then the distances and a 2nd sync.

    The optimizer step that runs between the two in training is not part of the cost.
    """
    norms = monitor_logging_step(plan)

    def run() -> None:
        norms()
        before = snapshot(plan.tensors)
        moved = squared_distances(plan.tensors, before)
        plan.group_norms(moved).tolist()

    return run


def naive(params: list[torch.Tensor]) -> Callable[[], list[float]]:
    return lambda: [p.detach().norm().item() for p in params]


def training_step(model, optimizer, tokens, autocast: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast(tokens.device.type, torch.bfloat16, enabled=autocast):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


# -------------------------------------------------------------------- main
def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--autocast-bf16", action="store_true", help="bf16 autocast step")
    parser.add_argument("--copy-mb", type=int, default=512, help="size of the bandwidth probe")
    parser.add_argument(
        "--dry-run", action="store_true", help="a 1-layer model, 1 repeat: checks every path"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_norms: --device cuda, but CUDA is not available here")
    if args.dry_run:
        args.layers, args.batch, args.seq, args.repeats, args.copy_mb = 1, 1, 8, 1, 16
    torch.manual_seed(0)
    dtype = getattr(torch, args.param_dtype)
    model = GPT(layers=args.layers).to(device=device, dtype=dtype)
    params = list(model.parameters())
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.1), lr=1e-4, **fused)
    plan = _Plan.build(optimizer, index=0, names={})
    tokens = torch.randint(0, 50257, (args.batch, args.seq + 1), device=device)
    parameter_bytes = sum(p.numel() * p.element_size() for p in params)

    step_ms = median_ms(
        training_step(model, optimizer, tokens, args.autocast_bf16), device, args.repeats, 1
    )
    monitor_ms = median_ms(monitor_logging_step(plan), device, args.repeats, 2)
    ratio_ms = median_ms(monitor_with_update_ratio(plan), device, args.repeats, 1)
    naive_ms = median_ms(naive(params), device, args.repeats, 1)
    bandwidth = copy_bandwidth(device, args.copy_mb, args.repeats)
    bound_ms = 1000 * parameter_bytes / bandwidth

    count = sum(p.numel() for p in params)
    print(f"**{machine(device)}**: GPT-2-small shape, {args.layers} layers, {len(params)} tensors,")
    print(
        f"{count / 1e6:.1f}M {args.param_dtype} parameters ({parameter_bytes / 1e6:.0f} MB); "
        f"step: batch {args.batch} × {args.seq} tokens, AdamW"
        f"{', bf16 autocast' if args.autocast_bf16 else ''}; copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s, so reading every parameter once takes ≥ {bound_ms:.2f} ms; "
        f"medians of {args.repeats}."
    )
    print()
    print("| per logged step | time (ms) | vs training step | vs bandwidth bound |")
    print("|---|---|---|---|")
    print(f"| training step alone | {step_ms:.2f} | 100% | |")
    rows = [
        ("WeightNormMonitor: group norms + total, 1 host sync", monitor_ms),
        ("… with update ratio (snapshot, Δ norms, 2nd sync)", ratio_ms),
        ("naive: `p.norm().item()` per parameter", naive_ms),
    ]
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | +{100 * ms / step_ms:.2f}% | {ms / bound_ms:.1f}× |")


if __name__ == "__main__":
    main()
