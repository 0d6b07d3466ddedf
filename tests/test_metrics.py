"""experiments/metrics.py: scalars to metrics.jsonl and TensorBoard events."""

import glob
import json
import math
import os
import struct

from tensorboardX.proto import event_pb2

from experiments.runner import metrics


def _event_scalars(workdir):
  """(tag, step, value) of every scalar in the workdir's event files.

  Event files are TFRecords: u64 length, u32 crc, payload, u32 crc.
  """
  found = []
  for path in glob.glob(os.path.join(workdir, "events", "*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        found.append((value.tag, event.step, value.simple_value))
  return found


def test_nan_scalars_reach_jsonl_but_not_tensorboard(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"loss": 0.5, "monitor": float("nan")})
  writer.write_scalars(4, {"loss": 0.25, "monitor": 2.0})
  writer.close()

  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 4]
  assert math.isnan(rows[0]["monitor"]) and rows[1]["monitor"] == 2.0
  assert sorted(_event_scalars(str(tmp_path))) == [
      ("loss", 3, 0.5), ("loss", 4, 0.25), ("monitor", 4, 2.0)]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []
