"""Scalar metrics to the console, TensorBoard event files and metrics.jsonl.

clu's metric writers import TensorFlow, which capsjax does not depend on;
tensorboardX writes the same event files without it.
"""

import json
import logging as std_logging
import os

from absl import logging
import numpy as np
import tensorboardX


def _not_orbax_info(record) -> bool:
  return ("/orbax/" not in record.pathname
          or record.levelno >= std_logging.WARNING)


def quiet_orbax_logging() -> None:
  """Orbax logs every checkpoint step at INFO; keep only its warnings."""
  logging.get_absl_handler().addFilter(_not_orbax_info)


class MetricWriter:
  """Writes scalars; a disabled writer (non-zero process) does nothing."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "events"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    logging.info("[%d] %s", step,
                 ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))
    for k, v in scalars.items():
      # A NaN marks a monitor without an estimate this time (e.g. AIS
      # with too few effective runs); TensorBoard cannot plot it, and
      # tensorboardX warns on each one. metrics.jsonl keeps it.
      if np.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
