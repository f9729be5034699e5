"""ScalarRuns writes exactly what RunWriter (the protobuf library) writes, for every run."""

import time

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from wd_lightning.core.errors import InvalidArgumentError
from wd_lightning.training.scalar_runs import ScalarRuns
from wd_lightning.training.tensorboard import RunWriter, read_scalars

TAGS = ["train/loss", "weight_norm/decay", "weight_norm/total"]
# Step 0 (omitted by protobuf), one- and two-byte varints, and a large step.
STEPS = [0, 3, 127, 128, 300_000]


def _records(folder):
    (path,) = folder.glob("events.out.tfevents.*")
    events = list(LegacyEventFileLoader(str(path)).Load())
    for event in events:
        event.ClearField("wall_time")
    return [event.SerializeToString() for event in events]


def test_records_are_byte_for_byte_those_of_the_protobuf_writer(tmp_path):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, len(TAGS), generator=generator) * 1e3
    values[1, 2], values[2, 0], values[3, 1] = float("nan"), 0.0, float("-inf")
    runs = ScalarRuns([tmp_path / f"table{i}" for i in range(6)])
    for step in STEPS:
        runs.add_table(TAGS, values * (step + 1), step)
    runs.close()
    for i in range(6):
        writer = RunWriter(tmp_path / f"protobuf{i}")
        for step in STEPS:
            writer.add_scalars(
                dict(zip(TAGS, (values[i] * (step + 1)).tolist(), strict=True)), step
            )
        writer.close()
        # Reading checks both checksums of every record.
        assert _records(tmp_path / f"table{i}") == _records(tmp_path / f"protobuf{i}")


def test_only_the_masked_runs_get_the_values(tmp_path):
    runs = ScalarRuns([tmp_path / "a", tmp_path / "b"])
    runs.add_table(["x"], torch.tensor([[1.0], [2.0]]), 5, runs=torch.tensor([False, True]))
    runs.add_table(["x"], torch.tensor([[3.0], [4.0]]), 6)
    runs.close()
    assert read_scalars(tmp_path / "a") == {"x": [(6, 3.0)]}
    assert read_scalars(tmp_path / "b") == {"x": [(5, 2.0), (6, 4.0)]}


def test_events_reach_the_files_on_the_timer_without_a_flush(tmp_path):
    runs = ScalarRuns([tmp_path / "a"], flush_seconds=0.2)
    runs.add_table(["x"], torch.tensor([[1.0]]), 1)
    runs.add_table(["x"], torch.tensor([[2.0]]), 2)  # step 1 is complete now
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("a/events.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_scalars(tmp_path / "a") == {"x": [(1, 1.0)]}
    runs.close()


def test_a_full_buffer_is_flushed_at_once(tmp_path):
    runs = ScalarRuns([tmp_path / "a"], flush_seconds=3600, max_buffered_bytes=1)
    runs.add_table(["x"], torch.tensor([[1.0]]), 1)
    runs.add_table(["x"], torch.tensor([[2.0]]), 2)  # step 1 is complete now
    assert read_scalars(tmp_path / "a") == {"x": [(1, 1.0)]}
    runs.close()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(InvalidArgumentError, match="max_buffered_bytes"):
        ScalarRuns([tmp_path], max_buffered_bytes=0)
    with pytest.raises(InvalidArgumentError, match="flush_seconds"):
        ScalarRuns([tmp_path], flush_seconds=0)
    with pytest.raises(InvalidArgumentError, match="values"):
        ScalarRuns([tmp_path]).add_table(["x", "y"], torch.zeros(1, 1), 0)


def test_values_of_one_step_are_merged_into_one_event(tmp_path):
    # Gradient accumulation logs a step's values once per micro-batch: the last one wins.
    runs = ScalarRuns([tmp_path / "a", tmp_path / "b"])
    runs.add_table(["x"], torch.tensor([[1.0], [2.0]]), 3)
    only_a = torch.tensor([True, False])
    runs.add_table(["x", "y"], torch.tensor([[5.0, 6.0], [7.0, 8.0]]), 3, only_a)
    runs.close()
    assert read_scalars(tmp_path / "a") == {"x": [(3, 5.0)], "y": [(3, 6.0)]}
    assert read_scalars(tmp_path / "b") == {"x": [(3, 2.0)]}
    assert len(_records(tmp_path / "a")) == 2  # the file version, and one event
