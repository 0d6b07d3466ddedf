"""Parallel tempering (capsjax.tempering) against enumeration."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax

BETAS = (0.3, 0.6, 1.0)
STATES = np.array(list(itertools.product([0.0, 1.0], repeat=6)),
                  np.float32).reshape(-1, 3, 2)
INDEX = (STATES.reshape(-1, 6) * 2 ** np.arange(6)).sum(1).astype(int)


def _histogram(v):
  idx = (np.asarray(v).reshape(-1, 6) * 2 ** np.arange(6)).sum(1).astype(int)
  return np.bincount(idx, minlength=64) / len(idx)


def _exact(params, routing, beta=1.0):
  """p_beta(v) ∝ exp(f_beta(v)) over the 64 states, in INDEX order."""
  log_f = capsjax.tempered_log_density(params, jnp.asarray(STATES), routing,
                                       beta, jnp.zeros((3, 2)))
  p = np.zeros(64)
  p[INDEX] = np.asarray(jax.nn.softmax(log_f))
  return p


@pytest.mark.parametrize("iterations", [1, 3])
def test_every_rung_samples_its_tempered_model(iterations):
  """20,000 draws (2,000 chains x 10 thinned steps) per rung: total
  variation below 0.05 from the exact p_beta, while the rungs' exact
  distributions differ by more than that (so a wrong swap would show)."""
  routing = capsjax.Routing(iterations)
  params = capsjax.init_params(jax.random.key(0), 3, 2, 2, 2, weight_std=3.0)
  kernel = capsjax.tempering(routing, BETAS)
  run = jax.jit(functools.partial(capsjax.run_chain, kernel=kernel,
                                  params=params), static_argnames="num_steps")
  state = kernel.init(params, jnp.zeros((2000, 3, 2)))
  state, _ = run(jax.random.key(1), state=state, num_steps=200)
  counts = np.zeros((len(BETAS), 64))
  for i in range(10):
    state, info = run(jax.random.key(2 + i), state=state, num_steps=10)
    counts += [_histogram(state.ladder.v[rung]) for rung in range(len(BETAS))]
  for rung, beta in enumerate(BETAS):
    tv = 0.5 * np.abs(counts[rung] / 10 - _exact(params, routing, beta)).sum()
    assert tv < 0.05, (beta, tv)
  gap = 0.5 * np.abs(_exact(params, routing, BETAS[0])
                     - _exact(params, routing)).sum()
  assert gap > 0.15, gap
  np.testing.assert_array_equal(state.v, state.ladder.v[-1])
  swap = np.asarray(info.last.swap_rate)
  assert np.all(np.isnan(swap[0]) != np.isnan(swap[1]))  # even-odd pairs
  assert 0.2 < np.nanmean(swap) < 1.0
  if iterations > 1:
    assert 0.2 < float(jnp.mean(info.acceptance_rate)) < 1.0


def test_persistent_ladder_in_cd_gradient():
  """A ladder as the persistent chain: rerouted under new parameters, the
  model rung's samples in the negative statistics, the ladder returned."""
  routing = capsjax.Routing(3)
  params = capsjax.init_params(jax.random.key(0), 3, 2, 2, 2, weight_std=1.0)
  kernel = capsjax.tempering(routing, BETAS)
  v = jnp.asarray(STATES[:8])
  chain = kernel.init(params, jnp.asarray(STATES[8:13]))
  moved = {**params, "W": 2.0 * params["W"]}
  grads, info = jax.jit(functools.partial(
      capsjax.cd_gradient, kernel=kernel, through_routing=True))(
          jax.random.key(3), moved, v, chain=chain)
  assert info.chain.ladder.v.shape == (3, 5, 3, 2)
  np.testing.assert_allclose(
      info.chain.coefficients,
      capsjax.route_visible(moved, info.chain.v, routing), atol=1e-6)
  np.testing.assert_array_equal(info.negative, info.chain.v)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_bad_ladders_are_refused():
  routing = capsjax.Routing(1)
  for betas in [(0.5, 0.9), (0.0, 1.0), (0.6, 0.5, 1.0), (1.0,)]:
    with pytest.raises(ValueError, match="betas must increase"):
      capsjax.tempering(routing, betas)
  with pytest.raises(ValueError, match="Bernoulli"):
    capsjax.tempering(routing, BETAS, visible="gaussian")
  assert capsjax.tempering(routing, [0.5, 1]) == capsjax.tempering(
      routing, (0.5, 1.0))
