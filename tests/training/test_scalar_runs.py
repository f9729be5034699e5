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


def _framed_records(path):
    """Every record of an event file, each checked against TensorBoard's own checksum."""
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data, records = path.read_bytes(), []
    while data:
        header, data = data[:12], data[12:]
        (length,) = struct.unpack("<Q", header[:8])
        assert struct.unpack("<I", header[8:])[0] == masked_crc32c(header[:8])
        body, footer, data = data[:length], data[length : length + 4], data[length + 4 :]
        assert struct.unpack("<I", footer)[0] == masked_crc32c(body)
        records.append(body)
    return records


@pytest.mark.parametrize("runs_count", [3, 60], ids=["checksummed-one-by-one", "vectorised"])
def test_other_events_are_framed_as_tensorboard_frames_them_and_keep_their_order(
    tmp_path, runs_count
):
    from tensorboard.compat.proto.summary_pb2 import Summary

    def summary(run):
        # Three lengths: with 60 runs, 20 events of each (checksummed together).
        text = "x" * (run % 3)
        return Summary(value=[Summary.Value(tag="note", metadata=None, simple_value=run)]), text

    runs = ScalarRuns([tmp_path / f"table{i}" for i in range(runs_count)])
    values = torch.arange(runs_count * len(TAGS), dtype=torch.float32).view(runs_count, -1)
    runs.add_table(TAGS, values, 1)
    for run in range(runs_count):
        proto, text = summary(run)
        proto.value[0].tag += text
        runs.run(run).add_summary(proto, 2)
    runs.add_table(TAGS, values + 1, 3)
    runs.close()
    for run in range(runs_count):
        writer = RunWriter(tmp_path / f"protobuf{run}")
        writer.add_scalars(dict(zip(TAGS, values[run].tolist(), strict=True)), 1)
        proto, text = summary(run)
        proto.value[0].tag += text
        writer.add_summary(proto, 2)
        writer.add_scalars(dict(zip(TAGS, (values[run] + 1).tolist(), strict=True)), 3)
        writer.close()
        assert _records(tmp_path / f"table{run}") == _records(tmp_path / f"protobuf{run}")
        (path,) = (tmp_path / f"table{run}").glob("events.out.tfevents.*")
        assert len(_framed_records(path)) == 4  # file version, step 1, the summary, step 3
