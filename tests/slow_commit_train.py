"""`python -m experiments.train` with each checkpoint commit delayed.

For the SIGKILL test: Orbax writes a checkpoint into a temporary folder and
commits it by renaming; delaying the rename by CAPSJAX_TEST_COMMIT_DELAY
seconds (default 0.3) leaves a window in which a kill lands inside a
checkpoint write reliably. Nothing else changes.
"""

import asyncio
import os

from absl import app
from absl import flags
from orbax.checkpoint.path import atomicity  # orbax's public export

from experiments import train

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _slow_finalize(self, *args, **kwargs):
  await asyncio.sleep(float(os.environ.get("CAPSJAX_TEST_COMMIT_DELAY", "0.3")))
  return await _finalize(self, *args, **kwargs)


atomicity.AtomicRenameTemporaryPath.finalize = _slow_finalize

if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(train.main)
