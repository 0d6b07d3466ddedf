"""capsjax.topdown_means, pseudo_log_likelihood, ais_upper_bound and
sample_from_marginals (moved from the runner) against plain numpy loops
(tests/reference.py) and exact enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from tests import reference

NV, DV, NH, DH = 2, 2, 2, 2  # 4 visible neurons: 16 states, enumerable


def _params(seed, w_std=1.5):
  rng = np.random.default_rng(seed)
  return {"W": rng.normal(0, w_std, (NV, NH, DH, DV)).astype(np.float32),
          "a": rng.normal(0, 0.5, (NV, DV)).astype(np.float32),
          "b": rng.normal(0, 0.5, (NH, DH)).astype(np.float32)}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_topdown_means(params, h, r, rounds):
  """E[v | h; c] by loops: c = 1/Nh, then `rounds` times c = c(m) (the
  routing of Sabour et al., Procedure 1, on the means) and
  m_i = sigmoid(a_i + sum_j c_ij h_j W_ij)."""
  W, a = (np.asarray(params[k], np.float64) for k in ("W", "a"))
  nv, nh, _, dv = W.shape

  def means(c):
    m = np.zeros((nv, dv))
    for i in range(nv):
      x = a[i].copy()
      for j in range(nh):
        x += c[i, j] * (h[j] @ W[i, j])
      m[i] = _sigmoid(x)
    return m

  m = means(np.full((nv, nh), 1.0 / nh))
  if r > 1:
    for _ in range(rounds):
      m = means(reference.route(reference.predictions(W, m), r))
  return m


@pytest.mark.parametrize("r, rounds", [(1, 0), (1, 3), (3, 0), (3, 1),
                                       (3, 3)])
def test_topdown_means_match_the_loop(r, rounds):
  params = _params(0)
  hs = reference.binary_states((NH, DH))  # every upper state
  got = capsjax.topdown_means(params, jnp.asarray(hs, jnp.float32),
                              capsjax.Routing(r), rounds)
  assert got.shape == (len(hs), NV, DV)
  want = np.stack([reference_topdown_means(params, h, r, rounds)
                   for h in hs])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_topdown_means_is_exact_without_routing():
  """r = 1: the mean of v | h under uniform c, whatever the rounds."""
  params = _params(1)
  h = jnp.asarray(reference.binary_states((NH, DH))[5:9], jnp.float32)
  c = jnp.full((4, NV, NH), 1.0 / NH)
  exact = capsjax.visible_probs(params, h, c)
  for rounds in (0, 5):
    np.testing.assert_allclose(
        capsjax.topdown_means(params, h, capsjax.Routing(1), rounds), exact,
        rtol=1e-6)


def _conditionals(params, r):
  """log p(v_d | v_-d) of every state v and neuron d, (S, D), from the
  exact joint of the routed model (enumeration)."""
  states, log_p = reference.routed_log_probs(params, r)
  flat = states.reshape(len(states), -1)
  index = {tuple(s): k for k, s in enumerate(flat)}
  out = np.zeros(flat.shape)
  for k, s in enumerate(flat):
    for d in range(flat.shape[1]):
      t = s.copy()
      t[d] = 1 - t[d]
      other = log_p[index[tuple(t)]]
      out[k, d] = log_p[k] - np.logaddexp(log_p[k], other)
  return states, out


@pytest.mark.parametrize("r", [1, 3])
def test_pseudo_log_likelihood_is_one_neurons_conditional(r):
  """Each example's value is D log p(v_d | v_-d) for one neuron d."""
  params = _params(2)
  states, cond = _conditionals(params, r)
  d = NV * DV
  pll = np.asarray(capsjax.pseudo_log_likelihood(
      jax.random.key(0), params, jnp.asarray(states, jnp.float32),
      capsjax.Routing(r)))
  assert pll.shape == (len(states),)
  gaps = np.abs(pll[:, None] - d * cond).min(axis=1)
  np.testing.assert_array_less(gaps, 1e-3 * d)


def test_pseudo_log_likelihood_is_unbiased_for_the_full_sum():
  """Averaged over keys: sum_d log p(v_d | v_-d), the pseudo-likelihood."""
  r = 3
  params = _params(3)
  states, cond = _conditionals(params, r)
  v = jnp.asarray(states, jnp.float32)
  keys = jax.random.split(jax.random.key(1), 4_000)
  draws = jax.jit(jax.vmap(lambda k: capsjax.pseudo_log_likelihood(
      k, params, v, capsjax.Routing(r))))(keys)
  mean, sem = draws.mean(0), draws.std(0) / np.sqrt(len(keys))
  want = cond.sum(axis=1)
  assert np.all(np.abs(mean - want) < 5 * sem + 1e-4)


def reference_upper_bound(estimates, failure_probability=0.05):
  lowest = np.inf
  for x in estimates:
    lowest = min(lowest, float(x))
  return lowest + np.log(len(estimates) / failure_probability)


def test_ais_upper_bound_matches_the_loop():
  estimates = [-101.5, -99.25, -100.0]
  want = reference_upper_bound(estimates)
  assert capsjax.ais_upper_bound(estimates) == pytest.approx(want, abs=1e-12)
  assert isinstance(capsjax.ais_upper_bound(estimates), float)
  assert capsjax.ais_upper_bound([-90.0]) == pytest.approx(-90 + np.log(20))
  assert capsjax.ais_upper_bound(
      estimates, failure_probability=0.01) == pytest.approx(
          reference_upper_bound(estimates, 0.01))
  # jax arrays: a jax scalar, also under jit.
  x = jnp.asarray(estimates, jnp.float32)
  np.testing.assert_allclose(jax.jit(capsjax.ais_upper_bound)(x), want,
                             rtol=1e-6)
  with pytest.raises(ValueError):
    capsjax.ais_upper_bound([])


def test_ais_upper_bound_holds_for_unbiased_heavy_tailed_estimates():
  """Unbiased Z estimates with a heavy right tail (as degenerate AIS
  weights give): the bound is above the truth in >= 95% of the trials."""
  rng = np.random.default_rng(0)
  true_ll, sigma = -100.0, 3.0
  held = []
  for _ in range(2_000):
    # log Z_est = log Z + sigma N - sigma^2 / 2: E[Z_est] = Z.
    log_z_error = sigma * rng.normal(size=3) - sigma ** 2 / 2
    held.append(capsjax.ais_upper_bound(true_ll - log_z_error) >= true_ll)
  assert np.mean(held) >= 0.95


def test_sample_from_marginals_shapes_and_seed():
  params = _params(4)
  marginals = jnp.asarray([[0.1, 0.9], [0.5, 0.0]], jnp.float32)
  kernel = capsjax.mh(capsjax.Routing(3))

  def run(key):
    return capsjax.sample_from_marginals(key, kernel, params, marginals,
                                         num_chains=64, num_steps=3)

  state, info = run(jax.random.key(0))
  assert state.v.shape == (64, NV, DV)
  assert set(np.unique(state.v)) <= {0.0, 1.0}
  assert info.last.visible_mean.shape == (64, NV, DV)
  assert info.acceptance_rate.shape[0] == 3  # one row per step
  np.testing.assert_array_equal(run(jax.random.key(0))[0].v, state.v)
  assert not np.array_equal(run(jax.random.key(1))[0].v, state.v)


def test_sample_from_marginals_reaches_the_routed_model():
  """MH chains from the data marginals sample the routed model: the
  frequencies of the 16 states match its exact distribution."""
  r = 3
  params = _params(5, w_std=1.0)
  states, log_p = reference.routed_log_probs(params, r)
  index = {tuple(s.ravel()): k for k, s in enumerate(states)}
  marginals = jnp.full((NV, DV), 0.5, jnp.float32)
  state, _ = jax.jit(lambda k: capsjax.sample_from_marginals(
      k, capsjax.mh(capsjax.Routing(r)), params, marginals,
      num_chains=8_000, num_steps=40))(jax.random.key(2))
  counts = np.zeros(len(states))
  for v in np.asarray(state.v, np.float64).reshape(len(state.v), -1):
    counts[index[tuple(v)]] += 1
  freq = counts / counts.sum()
  assert 0.5 * np.abs(freq - np.exp(log_p)).sum() < 0.03  # total variation
