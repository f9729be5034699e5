"""Two-process CPU (gloo) runs for the distributed tests; each rank writes what it saw as JSON.

    python tests/distributed_norms_worker.py dtensor OUT_DIR   # norms.py on DTensors
    python tests/distributed_norms_worker.py ddp OUT_DIR       # a Lightning DDP fit
    python tests/distributed_norms_worker.py fsdp2 OUT_DIR     # a Lightning FSDP2 fit

The Lightning modes are started once by the test; Lightning starts the second
rank by running this script again. ``OUT_DIR/rank<R>.json`` holds, per rank,
every metric the monitor handed to a logger and independently computed norms.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

warnings.filterwarnings("ignore")


# ------------------------------------------------------------------ dtensor
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dtensor_rank(rank: int, port: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from wd_lightning.core.norms import group_norm, snapshot, squared_distances, squared_norms

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    generator = torch.Generator().manual_seed(0)  # the same full tensors on both ranks
    full = [
        torch.randn(5, 3, generator=generator),  # uneven rows: 3 on rank 0, 2 on rank 1
        torch.randn(4, 7, generator=generator),
        torch.randn(6, generator=generator).to(torch.bfloat16),
        torch.randn(1, 2, generator=generator),  # rank 1 holds an empty shard
        torch.randn(3, 3, generator=generator),
    ]
    layouts = [[Shard(0)], [Shard(1)], [Shard(0)], [Shard(0)], [Replicate()]]
    sharded = [distribute_tensor(t, mesh, p) for t, p in zip(full, layouts, strict=True)]
    plain = torch.randn(2, 2, generator=generator)  # an ordinary tensor next to DTensors
    # Halving every weight: ‖w/2‖² = ‖w − w/2‖² = ‖w‖²/4, computed from the full tensors.
    quarter_squares = [t.float().square().sum().item() / 4 for t in [*full, plain]]
    expected_group_norm = torch.stack([t.float().norm() for t in full]).norm().item() / 2
    before = snapshot([*sharded, plain])
    for tensor in [*(s.to_local() for s in sharded), plain]:
        tensor.mul_(0.5)
    result = {
        "local_numel": [s.to_local().numel() for s in sharded],
        "squared_norms": squared_norms([*sharded, plain]).tolist(),
        "group_norm": group_norm(sharded).item(),
        "squared_distances": squared_distances([*sharded, plain], before).tolist(),
        "expected_squared_norms": quarter_squares,
        "expected_group_norm": expected_group_norm,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    # Neither rank tears gloo down while the other may still be in a collective: that
    # aborts the process ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    # The results are on disk; skip the interpreter's teardown, where gloo's and torch's
    # worker threads are destroyed in an order that sometimes aborts the process.
    sys.stdout.flush()
    os._exit(0)


def run_dtensor(out: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_dtensor_rank, args=(_free_port(), out), nprocs=2)


# ---------------------------------------------------------------- lightning
class _Recorder:
    """Records, on every rank, what the monitor logs and the norms computed independently."""

    def __init__(self) -> None:
        from lightning.pytorch.loggers import Logger

        recorder = self

        class RecordingLogger(Logger):
            # No rank_zero_only here, unlike Lightning's loggers: a call from any
            # rank is recorded, so the test sees whether other ranks log.
            name = "recording"
            version = 0

            @property
            def experiment(self):
                return None

            def log_hyperparams(self, params, *args, **kwargs) -> None:
                pass

            def log_metrics(self, metrics, step=None) -> None:
                recorder.logged.append((step, dict(metrics)))

        self.logged: list = []
        self.reference: dict[int, dict[str, float]] = {}
        self.logger = RecordingLogger()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy of the whole tensor (a collective for a DTensor)."""
    tensor = tensor.detach()
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).float().clone()


def _reference_callback(recorder: _Recorder):
    from lightning.pytorch import Callback

    from wd_lightning.training.cadence import logged_step

    class Reference(Callback):
        """Whole-tensor norms before every optimizer step, and the weights it moved from."""

        def __init__(self) -> None:
            self.before: dict[str, torch.Tensor] | None = None

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            step = logged_step(trainer)
            self.before = {n: _full(p) for n, p in pl_module.model.named_parameters()}
            recorder.reference[step] = {n: w.norm().item() for n, w in self.before.items()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.before is None:
                return
            step = trainer.global_step - 1
            moved = {
                n: (_full(p) - self.before[n]).norm().item()
                for n, p in pl_module.model.named_parameters()
            }
            recorder.reference[step].update({f"moved/{n}": v for n, v in moved.items()})
            self.before = None

        def on_train_end(self, trainer, pl_module) -> None:
            recorder.reference[trainer.global_step] = {
                n: _full(p).norm().item() for n, p in pl_module.model.named_parameters()
            }

    return Reference()


def _module(sharded: bool):
    from lightning.pytorch import LightningModule

    class TwoLayer(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))

        def configure_model(self) -> None:
            if sharded:
                from torch.distributed.fsdp import fully_shard

                fully_shard(self.model, mesh=self.device_mesh["tensor_parallel"])

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            loss = nn.functional.mse_loss(self.model(inputs), targets)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            weights = [self.model[0].weight, self.model[2].weight]
            biases = [self.model[0].bias, self.model[2].bias]
            return torch.optim.SGD(
                [
                    {"params": weights, "name": "decay", "weight_decay": 0.1},
                    {"params": biases, "name": "no_decay", "weight_decay": 0.0},
                ],
                lr=0.1,
            )

    return TwoLayer()


def run_lightning(mode: str, out: str) -> None:
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from wd_lightning import WeightNormMonitor

    seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(32, 6, generator=generator), torch.randn(32, 1, generator=generator)
    )
    recorder = _Recorder()
    sharded = mode == "fsdp2"
    strategy = (
        ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2) if sharded else "ddp"
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=2,
        log_every_n_steps=1,
        accumulate_grad_batches=2,
        logger=[
            TensorBoardLogger(out, name="tb", version=0, default_hp_metric=False),
            recorder.logger,
        ],
        callbacks=[
            _reference_callback(recorder),
            WeightNormMonitor(log_params=True, log_update_ratio=True),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_module(sharded), DataLoader(data, batch_size=4))
    result = {
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "parameter_types": sorted(
            {type(p).__name__ for p in trainer.lightning_module.parameters()}
        ),
        "logged": recorder.logged,
        "reference": recorder.reference,
    }
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out_dir = sys.argv[1], sys.argv[2]
    if mode == "dtensor":
        run_dtensor(out_dir)
    else:
        run_lightning(mode, out_dir)
