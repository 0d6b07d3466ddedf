"""benchmarks/cd_benchmark.py's analytic FLOP count against XLA's own count.

The benchmark's "% of roofline" divides these counts by the measured
ceiling; XLA's cost analysis is the independent reference. (Speed itself is
never asserted in a test.)
"""

import functools

import jax
import optax
import pytest

from benchmarks import cd_benchmark
import capsjax


@pytest.mark.parametrize("monitors", [True, False])
def test_cd1_step_flops_match_xla_cost_analysis(monitors):
  """The benchmark's step (`train_step`, plus `cd_monitors` unless lean)."""
  layer, batch = cd_benchmark.PATCHES, cd_benchmark.BATCH
  opt = optax.sgd(0.01)
  step = jax.jit(functools.partial(
      cd_benchmark.cd_step, optimizer=opt,
      kernel=capsjax.gibbs(capsjax.Routing(1)), k=1, monitors=monitors))
  params = cd_benchmark._params(layer)
  v = cd_benchmark._binary_data(batch, layer.nv * layer.dv).reshape(
      batch, layer.nv, layer.dv)
  stats = cd_benchmark._compiled_stats(
      step, jax.random.key(0), capsjax.init_train_state(params, opt), v)
  analytic = cd_benchmark.cd_step_flops(layer, batch, 1, 1, monitors)
  # XLA also counts the elementwise work (sigmoids, sampling, the
  # optimizer), a few percent at this size; the contractions are the rest.
  assert analytic <= stats["xla_flops"] <= 1.1 * analytic
