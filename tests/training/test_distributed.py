"""Several processes: the sampler's shards, DDP and FSDP2 through the CLI, on CPU (gloo).

The slow tests run ``python -m wd_lightning fit`` as a user does: Lightning
starts the second process by running the same command again. Every rank
records what it trained on with ``tests.distributed_recorder.RankRecorder``.

Two processes with ``batch_size`` B train on the global batch of 2·B: DDP (and
FSDP2's reduce-scatter) average the two ranks' gradients, and the mean-loss
gradient over 2·B examples is the average of the two B-example means. So they
must reach the weights of one process with ``batch_size`` 2·B, up to float
rounding: the all-reduce adds the gradients in another order than one process
sums them, so the weights agree to float32 rounding (about 1e-7), not bitwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from tests.fits import REPO
from wd_lightning import InvalidArgumentError, WeightDecayModule
from wd_lightning.cli import WeightDecayCLI, fit_summary, main
from wd_lightning.training.data import EpochSeededSampler
from wd_lightning.training.tensorboard import read_scalars

QUIET = ["--trainer.enable_progress_bar", "false"]
# Weights after six or eight steps of a 2-process run against one process with
# the same global batch. Largest differences measured: 1.2e-7 under DDP (one
# float32 rounding step at |w| ≈ 1), 1.7e-6 under FSDP2 (lr 0.5 with momentum
# amplifies rounding); a run with another global batch is off by 0.19.
WEIGHT_ATOL = 1e-5


# ------------------------------------------------------------------- sampler
def _shards(num_examples: int, replicas: int, epoch: int = 0) -> list[list[int]]:
    samplers = [EpochSeededSampler(num_examples, 7, replicas, rank) for rank in range(replicas)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


def test_one_process_order_is_unchanged():
    sampler = EpochSeededSampler(20, seed=7)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed((7 << 32) + epoch)
        assert list(sampler) == torch.randperm(20, generator=generator).tolist()
        assert len(sampler) == 20 and sampler.num_replicas == 1 and sampler.rank == 0


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("epoch", [0, 1])
def test_ranks_together_see_the_single_process_global_batches(replicas, epoch):
    batch_size = 2
    num_examples = replicas * batch_size * 5
    single = EpochSeededSampler(num_examples, 7)
    single.set_epoch(epoch)
    order = list(single)
    shards = _shards(num_examples, replicas, epoch)
    assert sorted(i for shard in shards for i in shard) == list(range(num_examples))  # disjoint
    global_batch = batch_size * replicas
    for b in range(num_examples // global_batch):
        together = {i for shard in shards for i in shard[b * batch_size : (b + 1) * batch_size]}
        assert together == set(order[b * global_batch : (b + 1) * global_batch])


def test_each_epoch_has_its_own_order_on_every_rank():
    assert _shards(20, 2, epoch=0) != _shards(20, 2, epoch=1)
    assert _shards(20, 2, epoch=1) == _shards(20, 2, epoch=1)  # a pure function of the epoch


def test_uneven_sizes_are_padded_so_every_rank_takes_as_many_steps():
    shards = _shards(21, 2)
    assert [len(shard) for shard in shards] == [11, 11]
    order = list(EpochSeededSampler(21, 7))
    assert shards[1][-1] == order[0]  # the one repeated example: the epoch's first
    assert set(shards[0]) | set(shards[1]) == set(range(21))


def test_lightning_uses_the_sampler_as_it_is():
    # Lightning wraps any other sampler in one that reshuffles with the global seed.
    assert isinstance(EpochSeededSampler(4, 0), torch.utils.data.DistributedSampler)


def test_without_a_process_group_the_sampler_is_one_process():
    sampler = EpochSeededSampler(6, 0, num_replicas=None, rank=None)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 6)


@pytest.mark.parametrize(
    ("replicas", "rank", "argument"), [(0, 0, "num_replicas"), (2, 2, "rank"), (2, -1, "rank")]
)
def test_bad_shards_are_refused(replicas, rank, argument):
    with pytest.raises(InvalidArgumentError, match=f"^{argument}="):
        EpochSeededSampler(6, 0, num_replicas=replicas, rank=rank)


def test_fsdp2_refuses_a_tensor_parallel_mesh_it_has_no_plan_for():
    module = WeightDecayModule(torch.nn.Linear(2, 1))
    module._trainer = SimpleNamespace(strategy=ModelParallelStrategy())
    sizes = {"data_parallel": 1, "tensor_parallel": 2}
    module._device_mesh = {dim: SimpleNamespace(size=lambda n=n: n) for dim, n in sizes.items()}
    with pytest.raises(InvalidArgumentError, match=r"tensor_parallel_size=2 .* expected 1 "):
        module.configure_model()


# ----------------------------------------------------------- through the CLI
def _run_cli(tmp_path: Path, *args: str) -> tuple[str, list[dict]]:
    """``python -m wd_lightning fit ARGS`` in ``tmp_path``; its output and each rank's record."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    record = ["--trainer.callbacks", "tests.distributed_recorder.RankRecorder"]
    record += ["--trainer.callbacks.out_dir", str(tmp_path / "ranks")]
    result = subprocess.run(
        [sys.executable, "-m", "wd_lightning", "fit", *args, *record, *QUIET],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    ranks = sorted((tmp_path / "ranks").glob("rank*.json"))
    return output, [json.loads(path.read_text()) for path in ranks]


def _run_in_process(tmp_path: Path, *args: str) -> tuple[WeightDecayCLI, dict]:
    """One process, in this interpreter; the CLI and its recorder's record."""
    root = tmp_path / "one_process"
    record = ["--trainer.callbacks", "tests.distributed_recorder.RankRecorder"]
    record += ["--trainer.callbacks.out_dir", str(root / "ranks")]
    cli = WeightDecayCLI(
        args=["fit", *args, "--trainer.default_root_dir", str(root), *record, *QUIET]
    )
    return cli, json.loads((root / "ranks" / "rank0.json").read_text())


def _max_weight_gap(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max(
        (torch.tensor(first[name]) - torch.tensor(second[name])).abs().max().item()
        for name in first
    )


def _summary_figure(output: str, tag: str) -> float:
    (value,) = re.findall(rf"^  {re.escape(tag)}\s+(\S+)$", output, flags=re.MULTILINE)
    return float(value)


DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


@pytest.mark.slow
def test_ddp_through_the_cli_equals_one_process_with_the_global_batch(tmp_path):
    output, ranks = _run_cli(tmp_path, *DDP, "--trainer.max_epochs", "3")
    zero, one = ranks
    assert zero["world_size"] == one["world_size"] == 2
    # 20 examples, 5 per rank per step: 2 steps per epoch.
    assert zero["global_step"] == one["global_step"] == 6

    # Rank zero alone reports and writes: one run directory, one event file.
    assert output.count("Parameter groups:") == 1
    assert output.count("fit finished after 6 optimizer steps") == 1
    runs = list((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0"]
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1
    steps = [step for step, _ in read_scalars(runs[0])["weight_norm/decay"]]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # each point written once

    # DDP keeps the replicas identical, bit for bit.
    assert _max_weight_gap(zero["weights"], one["weights"]) == 0.0

    cli, single = _run_in_process(tmp_path, "--data.batch_size", "10", "--trainer.max_epochs", "3")
    assert single["global_step"] == 6

    # Every epoch, the ranks' batches are disjoint and together they are the
    # global batches of the (seed, epoch) order, which one process uses whole.
    sampler = EpochSeededSampler(20, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        per_rank = [[b["examples"] for b in r["batches"] if b["epoch"] == epoch] for r in ranks]
        whole = [b["examples"] for b in single["batches"] if b["epoch"] == epoch]
        assert whole == [order[:10], order[10:]]
        assert [len(batches) for batches in per_rank] == [2, 2]
        for b, (mine, theirs) in enumerate(zip(*per_rank, strict=True)):
            assert not set(mine) & set(theirs)
            assert set(mine) | set(theirs) == set(whole[b])

    # The same weights and final figures as one process with batch_size 2 × 5.
    gap = _max_weight_gap(zero["weights"], single["weights"])
    assert gap <= WEIGHT_ATOL, f"max abs weight difference {gap:.3g}"
    summary = fit_summary(cli.trainer)
    for tag in ("train/loss", "val/loss", "val/mse", "weight_norm/decay", "weight_norm/no_decay"):
        expected = _summary_figure(summary, tag)
        assert _summary_figure(output, tag) == pytest.approx(expected, rel=1e-4), tag

    # Another global batch (one process, batch_size 5) ends elsewhere: the check can fail.
    _, other = _run_in_process(tmp_path / "other", "--trainer.max_epochs", "3")
    assert _max_weight_gap(zero["weights"], other["weights"]) > 100 * WEIGHT_ATOL


@pytest.mark.slow
def test_ddp_spawn_summary_comes_from_the_training_processes(tmp_path, capfd):
    # The trained processes are children here: the CLI's own process never trains.
    spawn = ["--trainer.strategy", "ddp_spawn", "--trainer.devices", "2"]
    args = [*spawn, "--trainer.accelerator", "cpu", "--trainer.max_epochs", "3"]
    main(["fit", *args, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    out = capfd.readouterr().out
    assert out.count("fit finished after 6 optimizer steps") == 1
    assert "weight_norm/decay" in out
    runs = [run.name for run in (tmp_path / "lightning_logs").iterdir()]
    assert runs == ["version_0"] and f"logs: {tmp_path / 'lightning_logs' / 'version_0'}" in out


MLP_CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 2
  log_every_n_steps: 1
model:
  class_path: wd_lightning.WeightDecayModule
  init_args:
    weight_decay: 0.1
    model:
      class_path: wd_lightning.MLP
      init_args: {in_features: 6, hidden_features: [5], out_features: 3, norm: layer}
    loss:
      class_path: torch.nn.CrossEntropyLoss
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.5, momentum: 0.9}
data:
  class_path: wd_lightning.SyntheticClassificationDataModule
  init_args: {num_train: 32, num_val: 16, num_inputs: 6, num_classes: 3, batch_size: 4}
"""
FSDP2 = [
    *("--trainer.accelerator", "cpu", "--trainer.devices", "2"),
    *("--trainer.strategy", "ModelParallelStrategy"),
    *("--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1"),
]


@pytest.mark.slow
@pytest.mark.parametrize("penalty", ["optimizer", "loss"])
def test_fsdp2_through_the_cli_has_the_unsharded_groups_and_norms(tmp_path, penalty):
    config = tmp_path / "mlp.yaml"
    config.write_text(MLP_CONFIG)
    args = ["--config", str(config), "--model.penalty", penalty, "--weight_norm.log_params", "true"]
    output, ranks = _run_cli(tmp_path, *FSDP2, *args)
    zero, one = ranks
    assert zero["parameter_types"] == one["parameter_types"] == ["DTensor"]
    assert zero["global_step"] == 8  # 32 examples, 4 per rank per step, 2 epochs

    # One process with the global batch of 8, unsharded.
    cli, single = _run_in_process(tmp_path, *args, "--data.batch_size", "8")  # after --config
    assert single["parameter_types"] == ["Parameter"] and single["global_step"] == 8

    # The same groups, judged by the parameters' full shapes, on every rank.
    assert zero["groups"] == one["groups"] == single["groups"]
    assert [group["param_names"] for group in zero["groups"]] == [
        ["layers.0.weight", "layers.3.weight"],
        ["layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.3.bias"],
    ]
    assert zero["report"] == single["report"]
    assert output.count("Parameter groups:") == 1 and zero["report"] in output

    # The same weights, and rank zero logged the same whole-parameter norms at every step.
    gap = _max_weight_gap(zero["weights"], single["weights"])
    assert gap <= WEIGHT_ATOL, f"max abs weight difference {gap:.3g}"
    (run,) = (tmp_path / "lightning_logs").iterdir()
    sharded = read_scalars(run)
    unsharded = read_scalars(Path(cli.trainer.log_dir))
    tags = [tag for tag in unsharded if tag.startswith("weight_norm/")]
    assert len(tags) == 9  # 2 groups, the total, 6 parameters
    for tag in tags:
        assert [step for step, _ in sharded[tag]] == list(range(9)), tag
        for (_, got), (_, expected) in zip(sharded[tag], unsharded[tag], strict=True):
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), tag
