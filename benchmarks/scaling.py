r"""Data-parallel scaling: CD updates per second on 1, 2, 4 and 8 devices.

  python -m benchmarks.scaling [--devices=1,2,4,8] [--steps=50] \
      [--batch_size=128] [--out=scaling.json]

Each device count runs in its own subprocess. On a CPU the devices are
forced (XLA_FLAGS=--xla_force_host_platform_device_count=N): they are
slices of the same cores, so this measures the overhead of splitting the
step, not a speed-up; run it on a multi-GPU or TPU host for real scaling
(--platform=gpu|tpu uses the devices that are there).

Times the jitted update of the default config (49 -> 16x16 capsules, PCD-1,
the batch split over the devices) after one warm-up step; prints a table
and writes JSON.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"],
                             "Device counts to time.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed updates per count.")
_BATCH = flags.DEFINE_integer("batch_size", 128,
                              "Global batch (a multiple of every count).")
_PLATFORM = flags.DEFINE_string("platform", "cpu", "cpu (forced devices), "
                                "gpu or tpu (the devices present).")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results.")
_WORKER = flags.DEFINE_integer("worker", None, "Internal: time this many "
                               "devices in this process.")


def time_updates(num_devices: int, steps: int, batch_size: int) -> dict:
  """Updates per second of the default config on `num_devices` devices."""
  import jax  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from experiments.configs import default
  from experiments.runner import data as data_io
  from experiments.runner import factories
  from experiments.runner import front_ends
  from experiments.runner import state as state_lib
  from experiments.runner import update as update_lib
  # pylint: enable=g-import-not-at-top

  config = default.get_config()
  config.update(num_devices=num_devices, batch_size=batch_size)
  front_end = front_ends.get(config)
  data = data_io.load_data(config)
  optimizer = factories.make_optimizer(config)
  shardings = state_lib.make_shardings(config, front_end)
  update = update_lib.make_update(config, front_end, optimizer, shardings)
  state = state_lib.initial_state(config, front_end, data.train, optimizer)
  batches = [update_lib.train_batch(config, data.train, s, shardings)
             for s in range(steps + 1)]
  state = jax.block_until_ready(update(state, batches[0])[0])  # compiles
  start = time.perf_counter()
  for batch in batches[1:]:
    state, _, finite = update(state, batch)
    # As the runner does (its divergence check), wait for each update: many
    # updates in flight can deadlock XLA:CPU's all-reduce rendezvous when
    # forced devices outnumber the cores.
    jax.device_get(finite)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  return dict(devices=num_devices, steps_per_second=steps / seconds,
              examples_per_second=steps * batch_size / seconds,
              device_kind=jax.devices()[0].device_kind,
              platform=jax.devices()[0].platform)


def main(argv):
  del argv
  if _WORKER.value is not None:
    print(json.dumps(time_updates(_WORKER.value, _STEPS.value, _BATCH.value)))
    return
  rows = []
  for n in map(int, _DEVICES.value):
    env = dict(os.environ)
    if _PLATFORM.value == "cpu":
      env["JAX_PLATFORMS"] = "cpu"
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={n}")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", f"--worker={n}",
         f"--steps={_STEPS.value}", f"--batch_size={_BATCH.value}"],
        env=env, capture_output=True, text=True, check=False)
    if result.returncode:
      raise SystemExit(f"error: {n} devices: {result.stderr[-2000:]}")
    rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
  base = rows[0]["steps_per_second"]
  for row in rows:
    row["relative_to_first"] = row["steps_per_second"] / base
  report = dict(date=datetime.date.today().isoformat(),
                machine=f"{platform.machine()}, {os.cpu_count()} cores",
                batch_size=_BATCH.value, steps=_STEPS.value,
                forced_cpu_devices=_PLATFORM.value == "cpu", rows=rows)
  print("devices  updates/s  examples/s  relative")
  for row in rows:
    print(f"{row['devices']:7d}  {row['steps_per_second']:9.1f}  "
          f"{row['examples_per_second']:10.0f}  "
          f"{row['relative_to_first']:8.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)
