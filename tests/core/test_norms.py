import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.fits import REPO
from wd_lightning.core.norms import (
    group_norm,
    segment_norms,
    snapshot,
    squared_distances,
    squared_norms,
)

WORKER = REPO / "tests" / "distributed_norms_worker.py"


def run_worker(mode: str, out_dir, timeout: int = 180) -> list[dict]:
    """Run a two-process mode of the worker script; return each rank's JSON record."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(WORKER), mode, str(out_dir)],
        cwd=out_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


shapes = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=6)


@given(shapes, st.integers(0, 2**31 - 1))
def test_squared_norms_match_one_norm_per_tensor(shape_list, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator) * 10 for shape in shape_list]
    expected = torch.stack([t.double().square().sum() for t in tensors]).float()
    torch.testing.assert_close(squared_norms(tensors), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(group_norm(tensors), expected.sum().sqrt(), rtol=1e-5, atol=1e-5)


def test_mixed_dtypes_are_measured_in_float32():
    weights = [
        torch.full((4096,), 0.01, dtype=torch.bfloat16),
        torch.full((3,), 2.0, dtype=torch.float64),
        torch.tensor([3.0]),
    ]
    squares = squared_norms(weights)
    assert squares.dtype == torch.float32
    bf16_value = torch.tensor(0.01, dtype=torch.bfloat16).double().item()
    expected = torch.tensor([4096 * bf16_value**2, 12.0, 9.0], dtype=torch.float32)
    torch.testing.assert_close(squares, expected, rtol=1e-6, atol=0)


def test_segment_norms_add_squares_within_each_segment():
    squares = torch.tensor([1.0, 4.0, 9.0, 16.0])
    norms = segment_norms(squares, torch.tensor([1, 0, 1, 1]), 3)
    torch.testing.assert_close(norms, torch.tensor([2.0, 26.0**0.5, 0.0]))


def test_snapshot_is_a_copy_and_distances_measure_the_change():
    weights = [torch.arange(4.0), torch.ones(2, 3, dtype=torch.bfloat16)]
    before = snapshot(weights)
    assert all(b.data_ptr() != w.data_ptr() for b, w in zip(before, weights, strict=True))
    weights[0].add_(torch.tensor([3.0, 0.0, 0.0, 4.0]))
    weights[1].mul_(2)
    assert torch.equal(before[0], torch.arange(4.0))  # untouched by the change
    torch.testing.assert_close(squared_distances(weights, before), torch.tensor([25.0, 6.0]))
    assert torch.equal(before[0], -torch.tensor([3.0, 0.0, 0.0, 4.0]))  # consumed in place


def test_distances_need_one_snapshot_per_tensor():
    with pytest.raises(ValueError, match="2 tensors but 1 snapshots"):
        squared_distances([torch.ones(1), torch.ones(1)], [torch.ones(1)])


def test_empty_inputs():
    assert squared_norms([]).shape == (0,)
    assert squared_distances([], []).shape == (0,)
    assert snapshot([]) == []
    assert group_norm([]).item() == 0.0


@pytest.mark.slow
def test_dtensors_are_measured_whole_across_two_gloo_processes(tmp_path):
    # Shard(0) with uneven and empty shards, Shard(1), a bf16 shard, a replicated
    # DTensor (counted once, not once per rank) and a plain tensor, on a 2-rank CPU mesh.
    ranks = run_worker("dtensor", tmp_path)
    assert ranks[0]["local_numel"] == [9, 16, 3, 2, 9]
    assert ranks[1]["local_numel"] == [6, 12, 3, 0, 9]
    for record in ranks:
        for key in ("squared_norms", "squared_distances"):
            assert record[key] == pytest.approx(record["expected_squared_norms"], rel=1e-5)
        assert record["group_norm"] == pytest.approx(record["expected_group_norm"], rel=1e-5)
