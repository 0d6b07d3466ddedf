"""Tests of capsjax.sampling: the paper's alternation and its MH correction.

References are independent of capsjax: exact p(v) of the routed model by
enumeration (`reference.routed_log_probs`), the exact stationary distribution
of the uncorrected chain from its 16 x 16 transition matrix (plain loops
below), and the MH acceptance ratio written as pi(v') q(v | v') / (pi(v)
q(v' | v)) with the proposal normalized by enumeration.

Statistical tests run thousands of independent chains with fixed keys. Their
bound on the total-variation (TV) distance counts one sample per chain
(N = number of chains): each chain's time-averaged state frequencies have at
most the variance of a single draw, and chains are independent, so this
overstates the noise (the measured TVs sit well below it).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import Routing
from capsjax import sampling
from tests import reference as ref

# The tiny routed layer of the statistical tests: 2 visible capsules of 2
# bits (16 states), 2 hidden capsules of 2, 3 routing iterations. With
# W ~ N(0, 1.5^2) the coefficients range from 0.002 to 0.998 across the 16
# states, and the uncorrected chain's stationary law is far from p(v).
NV, DV, NH, DH = 2, 2, 2, 2
W_STD, BIAS_STD, TINY_SEED = 1.5, 1.0, 2
ROUTED = 3
NUM_CHAINS, BURN_IN, NUM_STEPS = 4096, 50, 100
# Burn-in: on 12 random layers like this one (MH acceptance 0.7 to 0.9),
# corrected chains were within TV 0.003 of p(v) after 20 steps on 11 and
# after 100 on the last. This layer accepts 0.54 of proposals and reaches
# TV 0.003 after 50 steps, 1/15 of the bound.


# The kernels of the tiny layer. Kernels are hashable values: static
# arguments under jit.
MH = capsjax.mh(Routing(ROUTED))
GIBBS = capsjax.gibbs(Routing(ROUTED))
RBM = capsjax.gibbs(Routing(1))


# Eager calls retrace routing's fori_loop each time (~0.5 s a call); tests jit.
@functools.partial(jax.jit, static_argnums=0)
def init_chain(kernel, params, v):
  return kernel.init(params, v)


@functools.partial(jax.jit, static_argnums=0)
def kernel_step(kernel, key, state, params):
  return kernel.step(key, state, params)


def random_params(seed, nv=NV, dv=DV, nh=NH, dh=DH, w_std=W_STD,
                  bias_std=BIAS_STD):
  """Gaussian W, a, b from numpy (no eager jax.random: each op compiles)."""
  rng = np.random.default_rng(seed)
  params = {"W": w_std * rng.normal(size=(nv, nh, dh, dv)),
            "a": bias_std * rng.normal(size=(nv, dv)),
            "b": bias_std * rng.normal(size=(nh, dh))}
  return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def random_bits(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 2, shape),
                     jnp.float32)


def state_index(v):
  """Index of a binary state in `reference.binary_states` order.

  The first neuron is the highest bit.
  """
  bits = v.reshape(v.shape[:-2] + (-1,)).astype(jnp.int32)
  n = bits.shape[-1]
  return jnp.sum(bits << jnp.arange(n - 1, -1, -1), axis=-1)


@functools.partial(jax.jit, static_argnames=(
    "kernel", "num_chains", "burn_in", "num_steps"))
def visit_frequencies(key, params, *, kernel, num_chains=NUM_CHAINS,
                      burn_in=BURN_IN, num_steps=NUM_STEPS):
  """Fraction of (chain, step) pairs in each binary state after burn-in."""
  nv, dv = params["a"].shape
  key_start, key_run = jax.random.split(key)
  # Start: independent fair bits, far from p(v).
  v0 = jax.random.bernoulli(key_start, 0.5, (num_chains, nv, dv))
  state = kernel.init(params, v0.astype(jnp.float32))
  step = kernel.step

  # One scan for burn-in and collection: the step compiles once.
  def body(carry, key_and_t):
    s, counts = carry
    k, t = key_and_t
    s, _ = step(k, s, params)
    visits = jnp.bincount(state_index(s.v), length=2 ** (nv * dv))
    return (s, counts + jnp.where(t >= burn_in, visits, 0)), None

  counts = jnp.zeros(2 ** (nv * dv), jnp.int32)
  total = burn_in + num_steps
  (_, counts), _ = jax.lax.scan(
      body, (state, counts),
      (jax.random.split(key_run, total), jnp.arange(total)))
  return counts / (num_chains * num_steps)


def tv(p, q):
  return 0.5 * float(np.sum(np.abs(np.asarray(p) - np.asarray(q))))


def tv_bound(p, n):
  """3x the expected TV of n exact draws: sum_s sqrt(p_s (1 - p_s) / (2 pi n)).

  (E|p_hat_s - p_s| = sqrt(2/pi) sd_s for a normal error; TV halves the sum.)
  The TV's own spread is well below its mean for 16 states, so 3x the mean
  is far out in the tail for an exact sampler.
  """
  return 3.0 * float(np.sum(np.sqrt(p * (1.0 - p) / (2.0 * np.pi * n))))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _bernoulli_prob(x, mean):
  return float(np.prod(np.where(x == 1.0, mean, 1.0 - mean)))


def uncorrected_stationary(params, r):
  """Stationary distribution of the paper's alternation over binary v.

  T[v, v'] = sum_h p(h | v; c(v)) p(v' | h; c(v)), by plain loops.
  """
  W, a, b = (np.asarray(params[k], np.float64) for k in ("W", "a", "b"))
  nv, nh, dh, dv = W.shape
  states, hiddens = ref.binary_states((nv, dv)), ref.binary_states((nh, dh))
  T = np.zeros((len(states), len(states)))
  for s, v in enumerate(states):
    c = ref.route(ref.predictions(W, v), r)
    p_h = _sigmoid(b + np.einsum("ij,ijkl,il->jk", c, W, v))
    for h in hiddens:
      p_v = _sigmoid(a + np.einsum("ij,ijkl,jk->il", c, W, h))
      for t, v_new in enumerate(states):
        T[s, t] += _bernoulli_prob(h, p_h) * _bernoulli_prob(v_new, p_v)
  # Left eigenvector for eigenvalue 1.
  evals, evecs = np.linalg.eig(T.T)
  pi = np.real(evecs[:, np.argmin(np.abs(evals - 1.0))])
  return pi / pi.sum()


@pytest.fixture(scope="module")
def tiny():
  params = random_params(TINY_SEED)
  _, log_p = ref.routed_log_probs(params, ROUTED)
  return params, np.exp(log_p)


# ---------------------------------------------------------------------------
# MH with constant coefficients.


class TestConstantCoefficients:
  """`Routing(1)`: c = 1/Nh for every v, so every proposal is accepted."""

  @pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
  def test_every_proposal_accepted(self, visible):
    params = random_params(1, nv=3, dv=4, nh=2, dh=5, w_std=1.5)
    if visible == "bernoulli":
      v0 = random_bits(2, (512, 3, 4))
    else:
      v0 = jnp.asarray(np.random.default_rng(2).normal(0.0, 2.0, (512, 3, 4)),
                       jnp.float32)
    kernel = capsjax.mh(Routing(1), visible=visible)
    state = init_chain(kernel, params, v0)
    run = jax.jit(functools.partial(capsjax.run_chain, kernel=kernel,
                                    num_steps=20))
    _, infos = run(jax.random.key(2), state=state, params=params)
    assert infos.acceptance_rate.shape == (20, 512)
    # The log ratio is a sum of energies of size O(10) that cancel exactly;
    # float32 rounding leaves 1 - acceptance at 1e-6 (Bernoulli) and 3e-6
    # (Gaussian: larger energies) with these keys; 10x (30x) headroom.
    atol = 1e-5 if visible == "bernoulli" else 1e-4
    np.testing.assert_allclose(infos.acceptance_rate, 1.0, atol=atol)
    # A rejection needs a uniform draw above 1 - atol: about 10 in 1e4 draws
    # at most, deterministic with these keys.
    assert float(jnp.mean(infos.is_accepted)) > 0.999


# ---------------------------------------------------------------------------
# The MH acceptance ratio against its definition.


def _reference_acceptance(params, v, v_new, h, r):
  """min(1, pi(v', h) q(v | h, v') / (pi(v, h) q(v' | h, v))), by enumeration.

  pi(v, h) ∝ exp(-E(v, h; c(v)));
  q(x | h, y) = exp(-E(x, h; c(y))) / Z_h(c(y)),
  with Z_h summed over every binary visible state.
  """
  W = np.asarray(params["W"], np.float64)
  states = ref.binary_states(v.shape)
  c_of = lambda x: ref.route(ref.predictions(W, x), r)

  def log_q(x, c):
    neg_e = np.array([-ref.energy(params, s, h, c) for s in states])
    m = neg_e.max()
    return -ref.energy(params, x, h, c) - (m + np.log(np.exp(neg_e - m).sum()))

  c, c_new = c_of(v), c_of(v_new)
  log_ratio = (-ref.energy(params, v_new, h, c_new) + log_q(v, c_new)
               + ref.energy(params, v, h, c) - log_q(v_new, c))
  return min(1.0, float(np.exp(log_ratio)))


def test_blocked_log_ratio_matches_definition(tiny):
  """The blocked proposal's log acceptance ratio against its definition:
  log pi(v', h) - log pi(v, h) + log q_B(v | h, c') - log q_B(v' | h, c),
  with q_B the product over the block's capsules of p(v_i | h; c)."""
  params, _ = tiny
  rng = np.random.default_rng(11)
  W = np.asarray(params["W"], np.float64)
  a = np.asarray(params["a"], np.float64)
  c_of = lambda x: ref.route(ref.predictions(W, x), ROUTED)
  for _ in range(8):
    v = rng.integers(0, 2, (NV, DV)).astype(np.float64)
    h = rng.integers(0, 2, (NH, DH)).astype(np.float64)
    block = np.array([1.0, 0.0])[:, None]  # capsule 0 proposed, 1 kept
    v_new = v.copy()
    v_new[0] = rng.integers(0, 2, DV)
    c, c_new = c_of(v), c_of(v_new)

    def log_q(x, cc):  # capsule 0 only
      pre = a[0] + np.einsum("jk,jkl->l", cc[0][:, None] * h, W[0])
      return float(np.sum(x[0] * pre - np.logaddexp(0.0, pre)))

    expected = (-ref.energy(params, v_new, h, c_new)
                + ref.energy(params, v, h, c)
                + log_q(v, c_new) - log_q(v_new, c))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    x = capsjax.visible_input(params, f32(h), f32(c))
    x_new = capsjax.visible_input(params, f32(h), f32(c_new))
    got = sampling._log_ratio_from_inputs(  # pylint: disable=protected-access
        params, f32(v), f32(v_new), f32(h), x, x_new, "bernoulli",
        f32(block))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def batch(tiny):
  """64 chains of the tiny layer at random states, and one MH step from them."""
  params, _ = tiny
  state = init_chain(MH, params, random_bits(3, (64, NV, DV)))
  key = jax.random.key(4)
  return state, key, kernel_step(MH, key, state, params)


def test_acceptance_matches_definition(tiny, batch):
  params, _ = tiny
  state, _, (new, info) = batch
  accepted = np.flatnonzero(np.asarray(info.is_accepted))
  # Rejected steps do not expose their proposal; accepted ones (about 3/4)
  # do, as the new state.
  assert len(accepted) > 16
  for n in accepted:
    expected = _reference_acceptance(
        params, np.asarray(state.v[n], np.float64),
        np.asarray(new.v[n], np.float64),
        np.asarray(info.hidden[n], np.float64), ROUTED)
    # float32 energies of size O(10): relative error ~1e-6 in exp(log ratio).
    np.testing.assert_allclose(info.acceptance_rate[n], expected, rtol=1e-4,
                               atol=1e-6)


# ---------------------------------------------------------------------------
# Convergence to the exact p(v) of the routed model.


@pytest.fixture(scope="module")
def frequencies(tiny):
  """Visit frequencies of the three chains on the tiny layer (one run each)."""
  params, _ = tiny
  key = jax.random.key(5)
  return {
      "mh": visit_frequencies(key, params, kernel=MH),
      "gibbs": visit_frequencies(key, params, kernel=GIBBS),
      "rbm": visit_frequencies(key, params, kernel=RBM),
  }


class TestConvergence:

  def test_mh_chain_samples_routed_model(self, tiny, frequencies):
    _, p = tiny
    bound = tv_bound(p, NUM_CHAINS)
    tv_mh, tv_gibbs = tv(frequencies["mh"], p), tv(frequencies["gibbs"], p)
    print(f"\nlayer Nv={NV} Dv={DV} Nh={NH} Dh={DH} r={ROUTED} "
          f"W~N(0,{W_STD}^2) a,b~N(0,{BIAS_STD}^2) numpy seed {TINY_SEED}; "
          f"{NUM_CHAINS} chains, burn-in {BURN_IN}, {NUM_STEPS} steps; "
          f"TV bound {bound:.4f}"
          f"\nTV(MH-corrected, p) = {tv_mh:.4f}"
          f"\nTV(uncorrected alternation, p) = {tv_gibbs:.4f}")
    assert tv_mh < bound
    # Measured: 0.30 against a bound of 0.04. The alternation samples a
    # different distribution, not p(v).
    assert tv_gibbs > 3.0 * bound

  def test_uncorrected_chain_samples_its_own_stationary_law(self, tiny,
                                                            frequencies):
    """The gap above is the alternation's bias, not a sampler bug."""
    params, p = tiny
    pi = uncorrected_stationary(params, ROUTED)
    print(f"\nTV(exact stationary law of the alternation, p) = {tv(pi, p):.4f}"
          f"\nTV(uncorrected alternation, its stationary law) = "
          f"{tv(frequencies['gibbs'], pi):.4f}")
    assert tv(pi, p) > 0.2  # the exact bias on this layer (0.30)
    assert tv(frequencies["gibbs"], pi) < tv_bound(pi, NUM_CHAINS)

  def test_blocked_mh_chain_samples_routed_model(self, tiny):
    """Proposals for a random half of the capsules: still exact, and
    accepted more often than whole-image proposals."""
    params, p = tiny
    kernel = capsjax.mh(Routing(ROUTED), block_fraction=0.5)
    freq = visit_frequencies(jax.random.key(8), params, kernel=kernel)
    print(f"\nTV(MH, blocks of half the capsules, p) = {tv(freq, p):.4f} "
          f"(bound {tv_bound(p, NUM_CHAINS):.4f})")
    assert tv(freq, p) < tv_bound(p, NUM_CHAINS)
    state = init_chain(kernel, params, random_bits(3, (512, NV, DV)))
    rates = {}
    for name, k in (("block", kernel), ("whole", MH)):
      _, info = kernel_step(k, jax.random.key(9), state, params)
      rates[name] = float(jnp.mean(info.acceptance_rate))
    assert rates["block"] > rates["whole"]

  @pytest.mark.parametrize("rule,t", [("cosine", 0.2), ("normalized", 1.0)])
  def test_mh_chain_samples_scale_free_rules(self, rule, t):
    """The MH kernel is exact for any deterministic c(v), these rules too."""
    params = random_params(TINY_SEED)
    _, log_p = ref.routed_log_probs(params, ROUTED, t, rule)
    p = np.exp(log_p)
    kernel = capsjax.mh(Routing(ROUTED, temperature=t, rule=rule))
    freq = visit_frequencies(jax.random.key(7), params, kernel=kernel)
    print(f"\nTV(MH {rule} T={t}, p) = {tv(freq, p):.4f} "
          f"(bound {tv_bound(p, NUM_CHAINS):.4f})")
    assert tv(freq, p) < tv_bound(p, NUM_CHAINS)

  def test_gibbs_without_routing_samples_rbm(self, tiny, frequencies):
    params, _ = tiny
    _, log_p = ref.routed_log_probs(params, 1)
    p = np.exp(log_p)
    print(f"\nTV(Gibbs r=1, exact RBM p) = {tv(frequencies['rbm'], p):.4f} "
          f"(bound {tv_bound(p, NUM_CHAINS):.4f})")
    assert tv(frequencies["rbm"], p) < tv_bound(p, NUM_CHAINS)


# ---------------------------------------------------------------------------
# jit and vmap.


class TestTransforms:

  def test_shapes(self, batch):
    _, _, (new, info) = batch
    b = 64
    assert new.v.shape == (b, NV, DV)
    assert new.coefficients.shape == (b, NV, NH)
    assert info.hidden.shape == (b, NH, DH)
    assert info.visible_mean.shape == (b, NV, DV)
    assert info.acceptance_rate.shape == (b,)
    assert info.is_accepted.shape == (b,)
    assert info.is_accepted.dtype == jnp.bool_

  def test_jit_matches_eager(self, tiny, batch):
    params, _ = tiny
    state, key, jitted = batch
    eager = MH.step(key, state, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                         atol=1e-6),
                 eager, jitted)

  def test_vmap_matches_per_chain_calls(self, tiny, batch):
    """vmap over (key, chain) equals one unbatched call per chain.

    A batched call draws all chains from one key, so its per-chain draws are
    not comparable to per-chain keys; per-chain calls are the reference.
    """
    params, _ = tiny
    state = jax.tree.map(lambda x: x[:8], batch[0])
    keys = jax.random.split(jax.random.key(6), 8)
    step = lambda k, s: MH.step(k, s, params)
    batched_new, batched_info = jax.jit(jax.vmap(step))(keys, state)
    assert batched_new.v.shape == (8, NV, DV)
    single = jax.jit(step)
    for n in range(8):
      chain = capsjax.ChainState(state.v[n], state.coefficients[n])
      new, info = single(keys[n], chain)
      assert new.v.shape == (NV, DV) and info.acceptance_rate.shape == ()
      np.testing.assert_array_equal(batched_new.v[n], new.v)
      np.testing.assert_allclose(batched_new.coefficients[n], new.coefficients,
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(batched_info.hidden[n], info.hidden)
      np.testing.assert_allclose(batched_info.acceptance_rate[n],
                                 info.acceptance_rate, rtol=1e-5, atol=1e-6)
      assert bool(batched_info.is_accepted[n]) == bool(info.is_accepted)


# ---------------------------------------------------------------------------
# Kernels as values.


class TestKernels:

  def test_equal_options_give_equal_kernels(self):
    assert capsjax.gibbs(Routing(3)) == capsjax.gibbs(Routing(3))
    assert hash(capsjax.gibbs(Routing(3))) == hash(capsjax.gibbs(Routing(3)))
    assert capsjax.mh(Routing(3)) == capsjax.mh(Routing(3))
    assert hash(capsjax.mh(Routing(3))) == hash(capsjax.mh(Routing(3)))
    assert (capsjax.gibbs(Routing(2, temperature=0.5), visible="gaussian",
                          reroute=False)
            == capsjax.gibbs(Routing(2, 0.5), visible="gaussian",
                             reroute=False))
    others = [capsjax.gibbs(Routing(3), reroute=False),
              capsjax.gibbs(Routing(3), visible="gaussian"),
              capsjax.gibbs(Routing(3, temperature=2.0)),
              capsjax.gibbs(Routing(2)), capsjax.mh(Routing(3))]
    for other in others:
      assert other != capsjax.gibbs(Routing(3))
    assert len(set(others)) == len(others)

  def test_rebuilt_kernel_does_not_retrace(self, tiny):
    """Traces are counted by a Python side effect, which runs only while
    jit traces the function."""
    params, _ = tiny
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def step(kernel, key, v):
      traces.append(kernel.name)
      return kernel.step(key, kernel.init(params, v), params)

    v = random_bits(20, (8, NV, DV))
    step(capsjax.gibbs(Routing(3)), jax.random.key(0), v)
    step(capsjax.gibbs(Routing(3)), jax.random.key(1), v)
    step(capsjax.gibbs(Routing(num_iterations=3, temperature=1.0)),
         jax.random.key(2), v)
    assert traces == ["gibbs"]
    step(capsjax.mh(Routing(3)), jax.random.key(0), v)
    step(capsjax.mh(Routing(3)), jax.random.key(1), v)
    assert traces == ["gibbs", "mh"]
    # Other options are another program: the counter does count.
    step(capsjax.gibbs(Routing(3), reroute=False), jax.random.key(0), v)
    assert traces == ["gibbs", "mh", "gibbs"]

  def test_exact_flags_and_fields(self):
    assert capsjax.gibbs(Routing(1)).exact
    assert capsjax.gibbs(Routing(1), reroute=False).exact
    assert capsjax.gibbs(Routing(1, temperature=3.0)).exact
    assert not capsjax.gibbs(Routing(3)).exact
    assert not capsjax.gibbs(Routing(2), reroute=False).exact
    assert capsjax.mh(Routing(3)).exact and capsjax.mh(Routing(1)).exact
    kernel = capsjax.mh(Routing(2, temperature=0.5), visible="gaussian")
    assert isinstance(kernel, capsjax.Kernel)
    assert kernel.routing == Routing(2, 0.5) and kernel.visible == "gaussian"
    assert kernel.name == "mh" and capsjax.gibbs(Routing(2)).name == "gibbs"

  @pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)],
                           ids=["unbatched", "batch", "two_axes"])
  def test_coefficients_are_batched_like_v(self, tiny, batch_shape):
    """One ChainState layout, (..., Nv, Nh), for every kernel and routing,
    r = 1 included: after init, after a step, after run_chain. (Shapes
    only: jax.eval_shape traces without compiling.)"""
    params, _ = tiny
    v = jax.ShapeDtypeStruct(batch_shape + (NV, DV), jnp.float32)
    key = jax.random.key(0)
    for kernel in (RBM, GIBBS, MH, capsjax.mh(Routing(1)),
                   capsjax.gibbs(Routing(3), reroute=False),
                   capsjax.gibbs(Routing(1), reroute=False)):
      def chain(v, kernel=kernel):
        state = kernel.init(params, v)
        stepped, info = kernel.step(key, state, params)
        ran, _ = capsjax.run_chain(key, kernel, state, params, 3)
        return state, stepped, ran, info
      state, stepped, ran, info = jax.eval_shape(chain, v)
      for s in (state, stepped, ran):
        assert s.v.shape == batch_shape + (NV, DV), kernel
        assert s.coefficients.shape == batch_shape + (NV, NH), kernel
      assert info.hidden.shape == batch_shape + (NH, DH)
      assert info.acceptance_rate.shape == batch_shape

  @pytest.mark.parametrize("batch_shape", [(6,), (2, 3)])
  def test_unrouted_fast_path_equals_routing_each_example(self, tiny,
                                                          batch_shape):
    """r = 1 kernels use one shared (Nv, Nh) matrix internally. Their
    coefficients equal routing each example, and their steps equal, draw
    for draw, the per-example path: a Gibbs kernel of a routed layer that
    keeps (reroute=False) per-example uniform coefficients."""
    params, _ = tiny
    W = np.asarray(params["W"], np.float64)
    v = random_bits(21, batch_shape + (NV, DV))
    flat_v = np.asarray(v, np.float64).reshape((-1, NV, DV))
    per_example = np.stack([ref.route(ref.predictions(W, x), 1)
                            for x in flat_v]).reshape(batch_shape + (NV, NH))
    routed_each = jnp.stack(
        [capsjax.route(capsjax.predictions(params, x), Routing(1)).coefficients
         for x in v.reshape((-1, NV, DV))]).reshape(per_example.shape)
    np.testing.assert_allclose(routed_each, per_example, rtol=1e-6)
    per_example_kernel = capsjax.gibbs(Routing(3), reroute=False)
    slow_state = capsjax.ChainState(v, routed_each)
    key = jax.random.key(22)
    slow, slow_info = kernel_step(per_example_kernel, key, slow_state, params)
    slow_run, _ = jax.jit(capsjax.run_chain, static_argnums=(1, 4))(
        key, per_example_kernel, slow_state, params, 5)
    for kernel in (RBM, capsjax.mh(Routing(1))):
      state = init_chain(kernel, params, v)
      np.testing.assert_allclose(state.coefficients, per_example, rtol=1e-6)
      fast, fast_info = kernel_step(kernel, key, state, params)
      np.testing.assert_array_equal(fast_info.hidden, slow_info.hidden)
      np.testing.assert_array_equal(fast.v, slow.v)
      np.testing.assert_allclose(fast_info.visible_mean,
                                 slow_info.visible_mean, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(fast.coefficients, per_example, rtol=1e-6)
      fast_run, _ = jax.jit(capsjax.run_chain, static_argnums=(1, 4))(
          key, kernel, state, params, 5)
      np.testing.assert_array_equal(fast_run.v, slow_run.v)
      np.testing.assert_allclose(fast_run.coefficients, per_example,
                                 rtol=1e-6)
    # The visible means are the conditionals of docs/model.md section 3 with
    # per-example c, written out in numpy.
    a = np.asarray(params["a"], np.float64)
    h = np.asarray(slow_info.hidden, np.float64).reshape((-1, NH, DH))
    c = per_example.reshape((-1, NV, NH))
    x = np.einsum("bij,ijkl,bjk->bil", c, W, h)
    np.testing.assert_allclose(
        np.asarray(fast_info.visible_mean).reshape(x.shape),
        1.0 / (1.0 + np.exp(-(a + x))), rtol=1e-5, atol=1e-6)
