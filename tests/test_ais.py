"""Tests of capsjax.ais: annealed importance sampling of the routed model.

References independent of the AIS code: `capsjax.exact_log_z` (itself
checked against the numpy enumeration in test_likelihood.py), and, for the
tempered densities and the tempered MH kernel, plain numpy enumeration over
v and h with `tests/reference.py`.

The AIS layer: 4 visible capsules of 4 bits (16 neurons, 65,536 states,
enumerable), 2 hidden capsules of 4. Every AIS run here uses 200 runs, and
1000 betas unless it is the short schedule of 10; the jitted functions are
shared so that each (r, num_betas) compiles once.

Tolerances were calibrated with a sweep (20 random layers per setting,
W ~ N(0, 1) and N(0, 0.5^2), biases N(0, 0.5^2), other AIS keys than the
tests use): with 1000 betas and 200 runs the largest |log_z - exact| was
0.017 nats unrouted and 0.054 routed (r = 3), and the largest
|log_z - exact| / log_z_std was 2.15. With 10 betas the routed errors
reached 1.19 nats with ESS down to 3 and 4 of 20 outside 3 log_z_std: the
delta-method band is only trustworthy when the weights are not degenerate,
so the short schedule is tested for a wider band, not for accuracy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import Routing
from tests import reference as ref

NV, DV, NH, DH = 4, 4, 2, 4
NUM_RUNS, LONG, SHORT = 200, 1000, 10
# 1000 betas, 200 runs: 0.054 nats was the largest error of the sweep, so
# 0.1 leaves ~2x room for a new layer or key.
MAX_ERROR = 0.1
# The band: |log_z - exact| < 3 log_z_std + BAND_SLACK. 3 standard errors
# (the sweep's worst was 2.15); the slack covers float32 rounding of sums of
# 1000 increments of size O(1) (~1e-4) and the Jensen bias of the log
# (about -std^2 / 2, <= 0.002 here).
BAND_SLACK = 0.01

# Traces of `ais`, counted by a Python side effect (it runs only while jit
# traces): a new trace is a new compiled program.
AIS_TRACES = []


def _counted_ais(key, params, routing, *, num_betas, num_runs,
                 base_bias=None, betas=None, visible="bernoulli"):
  AIS_TRACES.append(num_betas)
  return capsjax.ais(key, params, routing, num_betas=num_betas,
                     num_runs=num_runs, base_bias=base_bias, betas=betas,
                     visible=visible)


ais = jax.jit(_counted_ais, static_argnames=(
    "routing", "num_betas", "num_runs", "visible"))



def routing_of(r):
  """A test's routing: an int r (iterations) or a Routing."""
  return r if isinstance(r, Routing) else Routing(r)


@functools.partial(jax.jit, static_argnums=1)
def _exact_stats(params, routing):
  log_z = capsjax.exact_log_z(params, routing)
  data = jnp.asarray(ref.bars_and_stripes(4), params["W"].dtype)
  return log_z, jnp.mean(capsjax.log_prob(params, data, routing, log_z))


def exact_stats(params, r):
  """(exact log Z, exact mean log p of 4x4 bars-and-stripes): one program
  per routing serves both the AIS references and the training check."""
  return _exact_stats(params, routing_of(r))


def exact_log_z(params, r):
  return exact_stats(params, r)[0]


def run_ais(key, params, r, num_betas, base_bias=None, betas=None):
  """`ais` with `betas` and `base_bias` always passed as arrays.

  Compilation dominates these tests (~4 s per AIS program on the loaded
  2-core machine); None and an array are different jit signatures. The
  long schedule always goes through here, the short one always through the
  defaults (`short_ais`): three AIS programs in all.
  """
  if base_bias is None:
    base_bias = np.zeros((NV, DV), np.float32)
  if betas is None:
    betas = capsjax.beta_schedule(num_betas)
  return ais(key, params, routing_of(r), num_betas=num_betas,
             num_runs=NUM_RUNS,
             base_bias=jnp.asarray(base_bias, jnp.float32),
             betas=jnp.asarray(betas, jnp.float32))


def short_ais(key, params):
  """The short schedule, routed, with the defaults (uniform base)."""
  return ais(key, params, Routing(3), num_betas=SHORT, num_runs=NUM_RUNS)


def random_params(seed, nv=NV, dv=DV, nh=NH, dh=DH, w_std=1.0, bias_std=0.5,
                  dtype=jnp.float32):
  """Gaussian W, a, b from numpy (no eager jax.random: each op compiles)."""
  rng = np.random.default_rng(seed)
  params = {"W": w_std * rng.normal(size=(nv, nh, dh, dv)),
            "a": bias_std * rng.normal(size=(nv, dv)),
            "b": bias_std * rng.normal(size=(nh, dh))}
  return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def skewed_data(seed, num=100):
  """Binary data whose marginals differ from 1/2; neuron (0, 0) never on.

  The never-on neuron exercises `base_rate_bias`'s clip: the base model then
  gives that neuron probability 1e-3, and the annealing must still find the
  model's mass where it is on.
  """
  rng = np.random.default_rng(seed)
  rates = rng.uniform(0.05, 0.95, size=(NV, DV))
  data = (rng.uniform(size=(num, NV, DV)) < rates).astype(np.float32)
  data[:, 0, 0] = 0.0
  return jnp.asarray(data)


# --------------------------------------------------------------------------
# Briefly trained layers: 4x4 bars-and-stripes (30 patterns; row i is
# capsule i), full batch, Adam 0.05, W ~ N(0, 0.5^2) at the start. The
# routed layer trains with MH chains and gradients through routing (the
# variant docs/model.md section 5 reports as learning), the unrouted with CD-1.
# After 200 steps the weights are far from the random ones' scale and
# shape the distribution (see test_training_moved_the_model).
TRAIN_STEPS, TRAIN_LR = 200, 0.05


def bars_and_stripes():
  return jnp.asarray(ref.bars_and_stripes(4), jnp.float32)


@functools.cache
def trained_params(r):
  data = bars_and_stripes()
  opt = capsjax.adam(TRAIN_LR)
  if r == 1:
    step = functools.partial(capsjax.train_step, optimizer=opt, k=1,
                             kernel=capsjax.gibbs(Routing(1)))
  else:
    step = functools.partial(capsjax.train_step, optimizer=opt, k=1,
                             kernel=capsjax.mh(Routing(r)),
                             through_routing=True)

  @jax.jit
  def train(params):
    state = capsjax.init_train_state(params, opt)
    body = lambda s, _: (step(jax.random.key(1), s, data)[0], None)
    return jax.lax.scan(body, state, None, length=TRAIN_STEPS)[0].params

  return train(random_params(0, w_std=0.5, bias_std=0.0))


# --------------------------------------------------------------------------
# The tempered densities f_beta and the tempered MH kernel, against numpy.

TINY = dict(nv=2, dv=2, nh=2, dh=2)  # 16 visible and 16 hidden states


def reference_log_density(params, v, r, beta, base_bias):
  """log sum_h exp((1 - beta) a_A.v - beta E(v, h; c(v))), by enumeration."""
  W = np.asarray(params["W"], np.float64)
  c = ref.route(ref.predictions(W, v), r)  # r: iterations, temperature 1
  neg_e = [(1 - beta) * np.sum(base_bias * v)
           - beta * ref.energy(params, v, h, c)
           for h in ref.binary_states(np.shape(params["b"]))]
  return np.logaddexp.reduce(neg_e)


tempered_log_density = jax.jit(capsjax.tempered_log_density,
                               static_argnums=2)


@pytest.mark.parametrize("r", [1, 3])
def test_tempered_log_density_matches_enumeration(r):
  with jax.enable_x64(True):
    params = random_params(3, **TINY, w_std=1.5, dtype=jnp.float64)
    base = np.random.default_rng(4).normal(size=(2, 2))
    states = ref.binary_states((2, 2))
    np_params = {k: np.asarray(v) for k, v in params.items()}
    for beta in (0.0, 0.37, 1.0):
      expected = [reference_log_density(np_params, v, r, beta, base)
                  for v in states]
      got = tempered_log_density(params, jnp.asarray(states), Routing(r),
                                 beta, jnp.asarray(base))
      np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # The endpoints in closed form: the routed model, and the base model
    # times 2^(Nh Dh) (every hidden neuron a fair coin at beta = 0).
    v = jnp.asarray(states)
    np.testing.assert_allclose(
        tempered_log_density(params, v, Routing(r), 1.0, jnp.asarray(base)),
        -jax.jit(capsjax.routed_free_energy, static_argnums=2)(
            params, v, Routing(r)),
        rtol=1e-12)
    np.testing.assert_allclose(
        tempered_log_density(params, v, Routing(r), 0.0, jnp.asarray(base)),
        np.sum(base * states, axis=(1, 2)) + 4 * np.log(2.0), rtol=1e-12)


def test_tempered_step_at_beta_one_is_mh_step():
  """At beta = 1 the tempered kernel is section 6's kernel, draw for draw.

  (With r = 1 every tempered step accepts: checked at every beta of a
  schedule by test_random_layer_matches_exact[1].)
  """
  params = random_params(5, w_std=1.5)
  base = jnp.asarray(np.random.default_rng(8).normal(size=(NV, DV)),
                     jnp.float32)

  kernel = capsjax.mh(Routing(3))

  @jax.jit
  def both(key, v):
    state = kernel.init(params, v)
    return (capsjax.tempered_mh_step(key, state, params, 1.0, base,
                                     routing=Routing(3)),
            kernel.step(key, state, params))

  (got, got_info), (want, want_info) = both(jax.random.key(7),
                                            skewed_data(6, num=64))
  np.testing.assert_array_equal(got.v, want.v)
  np.testing.assert_allclose(got.coefficients, want.coefficients, atol=1e-6)
  # The ratio itself: float32 of large terms that cancel.
  np.testing.assert_allclose(got_info.acceptance_rate,
                             want_info.acceptance_rate, atol=1e-5)
  assert 0.0 < float(jnp.mean(got_info.acceptance_rate)) < 1.0  # routing on


# Invariance of p_beta under the tempered MH kernel, on the tiny layer of
# test_sampling.py (W ~ N(0, 1.5^2): coefficients from ~0 to ~1 across the
# 16 states, so the correction matters). Chains start exactly at p_beta.
INV_BETA, INV_CHAINS, INV_STEPS, INV_SEED = 0.6, 16384, 10, 2
# Each chain's time-averaged frequencies vary at most as much as one draw,
# so E[TV] <= 1/2 sum_s sqrt(p_s / N) <= 1/2 sqrt(16 / N) = 0.016 for
# N = 16384 chains; twice that is the bound.
INV_TV_BOUND = 0.031


def state_index(v):
  """Index in `reference.binary_states` order (first neuron = highest bit)."""
  bits = v.reshape(v.shape[:-2] + (-1,)).astype(jnp.int32)
  n = bits.shape[-1]
  return jnp.sum(bits << jnp.arange(n - 1, -1, -1), axis=-1)


def tiny_tempered_layer():
  params = random_params(INV_SEED, **TINY, w_std=1.5, bias_std=1.0)
  base = np.random.default_rng(INV_SEED + 1).normal(size=(2, 2))
  np_params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  states = ref.binary_states((2, 2))
  log_f = np.array([reference_log_density(np_params, v, 3, INV_BETA, base)
                    for v in states])
  return params, base, states, np.exp(log_f - np.logaddexp.reduce(log_f))


def uncorrected_frequencies(params, base, states, p, r, beta, steps):
  """Exact mean over steps 1..`steps` of the state law of the UNcorrected
  tempered alternation (accept every proposal) started at `p`; numpy."""
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  bern = lambda x, q: np.prod(np.where(x > 0, q, 1.0 - q))
  W, a, b = (np.asarray(params[k], np.float64) for k in ("W", "a", "b"))
  hs = ref.binary_states(b.shape)
  T = np.zeros((len(states), len(states)))
  for m, v in enumerate(states):
    c = ref.route(ref.predictions(W, v), r)
    q_h = sig(beta * (b + np.einsum("ij,ijkl,il->jk", c, W, v)))
    for h in hs:
      q_v = sig((1 - beta) * base + beta * (a + np.einsum("ij,ijkl,jk->il",
                                                          c, W, h)))
      T[m] += bern(h, q_h) * np.array([bern(u, q_v) for u in states])
  law, total = p, np.zeros_like(p)
  for _ in range(steps):
    law = law @ T
    total += law
  return total / steps


@pytest.mark.parametrize("block_fraction", [1.0, 0.5])
def test_tempered_step_leaves_p_beta_invariant(block_fraction):
  """Whole-image proposals, and blocks of half the capsules (capsjax.mh's
  `block_fraction`), each exact for p_beta."""
  params, base, states, p = tiny_tempered_layer()
  base_j = jnp.asarray(base, jnp.float32)

  @jax.jit
  def frequencies(key):
    key0, key_run = jax.random.split(key)
    v0 = jnp.asarray(states, jnp.float32)[
        jax.random.choice(key0, 16, (INV_CHAINS,), p=jnp.asarray(p))]
    def body(state, k):
      state, info = capsjax.tempered_mh_step(k, state, params, INV_BETA,
                                             base_j, routing=Routing(3),
                                             block_fraction=block_fraction)
      return state, (state_index(state.v), jnp.mean(info.acceptance_rate))
    _, (idx, acc) = jax.lax.scan(body,
                                 capsjax.mh(Routing(3)).init(params, v0),
                                 jax.random.split(key_run, INV_STEPS))
    return jnp.bincount(idx.ravel(), length=16) / idx.size, jnp.mean(acc)

  freq, acc = frequencies(jax.random.key(12))
  tv = 0.5 * np.abs(np.asarray(freq) - p).sum()
  # The test has power: without the MH correction the same proposals drift
  # this far from p_beta in expectation (exact, by the transition matrix).
  drift = 0.5 * np.abs(uncorrected_frequencies(
      params, base, states, p, 3, INV_BETA, INV_STEPS) - p).sum()
  print(f"\nTV {tv:.4f} (bound {INV_TV_BOUND}), uncorrected drift "
        f"{drift:.4f}, acceptance {float(acc):.3f}")
  assert tv < INV_TV_BOUND
  assert drift > 2 * INV_TV_BOUND
  assert 0.2 < float(acc) < 1.0  # proposals do get rejected


# --------------------------------------------------------------------------
# AIS against exact_log_z.


def check_against_exact(result, exact):
  err = float(result.log_z) - float(exact)
  std = float(result.log_z_std)
  print(f"\nerror {err:+.4f} nats, std {std:.4f}, ess {float(result.ess):.1f}"
        f", acceptance {float(result.acceptance_rate):.3f}")
  assert abs(err) < MAX_ERROR
  assert abs(err) < 3.0 * std + BAND_SLACK


@pytest.mark.parametrize("r,temperature,rule", [
    (1, None, "sabour"), (3, None, "sabour"), (3, 4.0, "sabour"),
    (3, 0.2, "cosine")])
def test_random_layer_matches_exact(r, temperature, rule):
  params = random_params(20 + r)
  # A softer routed model: the temperature is part of the Routing.
  routing = Routing(r, 1.0 if temperature is None else temperature, rule)
  result = run_ais(jax.random.key(21), params, routing, LONG)
  check_against_exact(result, exact_log_z(params, routing))
  assert result.log_weights.shape == (NUM_RUNS,)
  assert 1.0 <= float(result.ess) <= NUM_RUNS
  if r == 1:
    # Constant coefficients: every tempered step is exact Gibbs.
    np.testing.assert_array_equal(result.acceptance_rate, 1.0)
  else:
    assert 0.0 < float(result.acceptance_rate) < 1.0


def test_training_moved_the_model():
  """The trained layers are not the random ones: the data got likelier."""
  start = random_params(0, w_std=0.5, bias_std=0.0)
  for r in (1, 3):
    params = trained_params(r)
    mean_ll = lambda p: float(exact_stats(p, r)[1])
    # 200 Adam steps (measured): r=1 from -11.3 to -7.5 nats per pattern,
    # W std 0.5 -> 3.0; r=3 from -12.3 to -9.0, W std 0.5 -> 1.0
    # (independent fair bits: 16 log 2 = -11.09; optimum -log 30 = -3.40).
    assert mean_ll(params) > mean_ll(start) + 1.0
    assert float(jnp.std(params["W"])) > 0.75


@pytest.mark.parametrize("r", [1, 3])
def test_trained_layer_matches_exact(r):
  """Over 10 other AIS keys: max |error| 0.021 (r=1), 0.047 (r=3, MH
  acceptance 0.19), max |error| / log_z_std 2.2 and 1.6."""
  params = trained_params(r)
  result = run_ais(jax.random.key(22), params, r, LONG)
  check_against_exact(result, exact_log_z(params, r))


@pytest.mark.parametrize("r", [1, 3])
def test_data_base_model_matches_exact(r):
  """Base = the clipped marginals of skewed data, one neuron never on.

  The data are unrelated to the layer, so this base is a worse start than
  the uniform one (over 10 other keys: max |error| 0.018 for r=1 and 0.068
  for r=3, max |error| / log_z_std 1.7); it must still be unbiased.
  """
  params = random_params(30 + r)
  base = capsjax.base_rate_bias(skewed_data(31))
  exact = exact_log_z(params, r)
  data_run = run_ais(jax.random.key(32), params, r, LONG, base_bias=base)
  check_against_exact(data_run, exact)
  # The base's own log Z_A: independent bits, and 2^(Nh Dh) hidden states.
  np.testing.assert_allclose(
      data_run.log_z_base,
      np.sum(np.logaddexp(0.0, np.asarray(base))) + NH * DH * np.log(2.0),
      rtol=1e-6)


def test_short_schedule_reports_a_wider_band():
  params = trained_params(3)
  short = short_ais(jax.random.key(40), params)
  long = run_ais(jax.random.key(40), params, 3, LONG)
  print(f"\nstd short {float(short.log_z_std):.3f} long "
        f"{float(long.log_z_std):.3f}; ess short {float(short.ess):.1f} "
        f"long {float(long.ess):.1f}")
  # Measured: std 0.20 vs 0.07, ESS 22 vs 95. The factor 2 is well inside.
  assert float(short.log_z_std) > 2.0 * float(long.log_z_std)
  assert float(short.ess) < float(long.ess)


def test_short_schedule_band_holds_for_usable_weights():
  """AIS's mean weight is unbiased for Z / Z_A whatever the schedule.

  On a routed layer with W std 0.5, where 10 betas still give usable
  weights (sweep: ESS >= 25, |error| / log_z_std <= 1.78), the band holds
  for the short schedule too.
  """
  params = random_params(41, w_std=0.5)
  result = short_ais(jax.random.key(42), params)
  exact = float(exact_log_z(params, 3))
  assert abs(float(result.log_z) - exact) < (3.0 * float(result.log_z_std)
                                             + BAND_SLACK)


def test_deterministic_and_jit_with_traced_schedule():
  params = random_params(50)
  key = jax.random.key(51)
  first = run_ais(key, params, 3, LONG)
  again = run_ais(key, params, 3, LONG)
  np.testing.assert_array_equal(first.log_weights, again.log_weights)
  other = run_ais(jax.random.key(52), params, 3, LONG)
  assert not np.array_equal(first.log_weights, other.log_weights)
  # betas and base_bias are traced arguments: a linear schedule and a
  # nonzero base reuse the same compiled program and still agree with the
  # exact value.
  traces = len(AIS_TRACES)
  result = run_ais(key, params, 3, LONG, base_bias=np.full((NV, DV), 0.3),
                   betas=capsjax.beta_schedule(LONG, "linear"))
  assert len(AIS_TRACES) == traces
  check_against_exact(result, exact_log_z(params, 3))


def test_default_base_is_uniform():
  """base_bias=None: every visible bit a fair coin, so log Z_A counts all
  2^(Nv Dv + Nh Dh) joint states. (The default schedule is beta_schedule's,
  tested below; comparing against an explicit one would cost a compile.)"""
  result = short_ais(jax.random.key(56), random_params(55))
  np.testing.assert_allclose(result.log_z_base,
                             (NV * DV + NH * DH) * np.log(2.0), rtol=1e-6)


def test_log_z_statistics_from_the_weights():
  """log_z, ess and log_z_std are the stated functions of log_weights."""
  params = random_params(60)
  result = short_ais(jax.random.key(61), params)
  w = np.exp(np.asarray(result.log_weights, np.float64))
  np.testing.assert_allclose(result.log_z,
                             float(result.log_z_base) + np.log(w.mean()),
                             rtol=1e-5)
  np.testing.assert_allclose(result.ess, w.sum() ** 2 / (w ** 2).sum(),
                             rtol=1e-4)
  np.testing.assert_allclose(
      result.log_z_std, w.std(ddof=1) / (np.sqrt(w.size) * w.mean()),
      rtol=1e-4)
  assert result.samples.shape == (NUM_RUNS, NV, DV)


# --------------------------------------------------------------------------
# Helpers and argument checks.


def test_beta_schedule():
  for kind in ("piecewise", "linear"):
    for n in (2, 10, 14500):
      betas = capsjax.beta_schedule(n, kind)
      assert betas.shape == (n,) and betas[0] == 0.0 and betas[-1] == 1.0
      assert np.all(np.diff(betas) > 0)
  # Salakhutdinov & Murray's counts, up to one beta at each knot.
  betas = capsjax.beta_schedule(14500)
  counts = [np.sum(betas < 0.5), np.sum((betas >= 0.5) & (betas < 0.9)),
            np.sum(betas >= 0.9)]
  np.testing.assert_allclose(counts, [500, 4000, 10000], atol=1)


def test_base_rate_bias():
  data = jnp.asarray([[[0.0, 1.0]], [[0.0, 1.0]], [[1.0, 1.0]],
                      [[0.0, 1.0]]])  # (4, 1, 2): marginals 1/4 and 1
  got = capsjax.base_rate_bias(data, eps=1e-3)
  np.testing.assert_allclose(got, [[np.log(1 / 3), np.log(0.999 / 0.001)]],
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(visible="gaussian"), "Bernoulli visible units only"),
    (dict(num_betas=1), "num_betas must be >= 2"),
    (dict(betas=np.linspace(0.1, 1.0, 5)), "from exactly 0 to exactly 1"),
    (dict(betas=np.linspace(0.0, 1.0, 4)),
     r"betas must have shape \(num_betas,\) = \(5,\)"),
    (dict(base_bias=np.zeros((NV, DV + 1))), "base_bias must have shape"),
])
def test_bad_arguments_raise(kwargs, match):
  params = random_params(0)
  call = dict(num_betas=5, num_runs=4)
  call.update(kwargs)
  with pytest.raises(ValueError, match=match):
    capsjax.ais(jax.random.key(0), params, Routing(3), **call)
