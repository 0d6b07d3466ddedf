"""cd_gradient, cd_monitors and the training step: hand-written statistics,
autodiff, the exact expected CD-1, and plain-loop optimizer references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import capsjax
from capsjax import Routing
from tests import reference

NV, DV, NH, DH = 3, 3, 2, 3  # 3x3 images, rows as capsules; 6 hidden neurons


def _params(seed, scale=1.0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"W": scale * jax.random.normal(k[0], (NV, NH, DH, DV), dtype),
          "a": 0.5 * jax.random.normal(k[1], (NV, DV), dtype),
          "b": 0.5 * jax.random.normal(k[2], (NH, DH), dtype)}


def _data(dtype=jnp.float32):
  return jnp.asarray(reference.bars_and_stripes(3), dtype)  # (14, 3, 3)


# Eager calls would compile each lax loop separately; one jit is faster.
cd_gradient = jax.jit(capsjax.cd_gradient, static_argnames=(
    "kernel", "k", "through_routing", "mean_field_negative"))
cd_monitors = jax.jit(capsjax.cd_monitors, static_argnames="kernel")


def _mean_free_energy(params, v, c, visible="bernoulli"):
  return jnp.mean(capsjax.free_energy(params, v, c, visible=visible))


# mode -> (kernel constructor, routing, kernel options, cd_gradient options)
CD_MODES = {
    "cd1": (capsjax.gibbs, 3, {}, dict(k=1)),
    "cd3_no_reroute": (capsjax.gibbs, 3, dict(reroute=False), dict(k=3)),
    "mh": (capsjax.mh, 3, {}, dict(k=2)),
    "mean_field": (capsjax.gibbs, 3, {}, dict(k=1, mean_field_negative=True)),
    "unrouted": (capsjax.gibbs, 1, {}, dict(k=1)),
}


def _mode_kernel(mode, visible):
  make, r, options, _ = CD_MODES[mode]
  return make(Routing(r), visible=visible, **options)


@pytest.mark.parametrize("mode", sorted(CD_MODES))
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_hand_written_statistics_equal_autodiff(mode, visible):
  with jax.enable_x64(True):
    params = _params(0, dtype=jnp.float64)
    v = _data(jnp.float64)
    kernel = _mode_kernel(mode, visible)
    kwargs = CD_MODES[mode][3]
    key = jax.random.key(1)
    grads, info = cd_gradient(key, params, v, kernel=kernel, **kwargs)
    r = kernel.routing
    c_data = capsjax.route_visible(params, v, r)
    np.testing.assert_allclose(info.data_coefficients, c_data, rtol=1e-12)
    v_neg, c_neg = info.chain.v, info.chain.coefficients
    if kwargs.get("mean_field_negative"):
      # The negatives are the last proposal's means, rerouted: rerun the
      # chain with cd_gradient's key to get them.
      _, infos = capsjax.run_chain(key, kernel, kernel.init(params, v),
                                   params, kwargs["k"])
      v_neg = infos.last.visible_mean
      c_neg = capsjax.route_visible(params, v_neg, r)
    # info names the negatives the statistics used.
    np.testing.assert_allclose(info.negative, v_neg, rtol=1e-12)
    np.testing.assert_allclose(info.negative_coefficients, c_neg, rtol=1e-12)
    def objective(p):
      return (_mean_free_energy(p, v, c_data, visible) -
              _mean_free_energy(p, v_neg, c_neg, visible))
    expected = jax.grad(objective)(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected[name], rtol=1e-9,
                                 atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        cd_monitors(params, v, info, kernel=kernel).free_energy_gap,
        objective(params), rtol=1e-10)


def test_through_routing_is_autodiff_of_routed_free_energy():
  with jax.enable_x64(True):
    params = _params(2, dtype=jnp.float64)
    v = _data(jnp.float64)
    grads, info = cd_gradient(jax.random.key(3), params, v,
                              kernel=capsjax.mh(Routing(3)), k=2,
                              through_routing=True)
    v_neg = info.chain.v

    def routed_f(p, x):  # F(x; c(x)) with c computed by the plain loop
      c = capsjax.route(jnp.einsum("ijkl,bil->bijk", p["W"], x), Routing(3))
      return jnp.mean(capsjax.free_energy(p, x, c.coefficients))

    expected = jax.grad(lambda p: routed_f(p, v) - routed_f(p, v_neg))(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected[name], rtol=1e-9,
                                 atol=1e-12, err_msg=name)
    # Routing matters: the stop-gradient rule differs on the same samples.
    c_data = capsjax.route_visible(params, v, Routing(3))
    stopped = jax.grad(lambda p: _mean_free_energy(p, v, c_data) -
                       _mean_free_energy(p, v_neg, info.chain.coefficients)
                       )(params)
    assert np.max(np.abs(stopped["W"] - grads["W"])) > 1e-3


# ---------------------------------------------------------------------------
# The expected CD-1 gradient, exactly, by enumerating h0 and v1 (numpy only).


def _np_route(W, states, r):
  return np.stack([reference.route(reference.predictions(W, v), r)
                   for v in states])


def _np_hidden_in(W, v, c):
  return np.einsum("...ij,ijkl,...il->...jk", c, W, v)


def _np_free_energy_grads(params, v, c):
  """dF/dtheta per state (closed form), for Bernoulli units."""
  W, b = params["W"], params["b"]
  p = 1.0 / (1.0 + np.exp(-(b + _np_hidden_in(W, v, c))))
  return {"W": -np.einsum("...ij,...jk,...il->...ijkl", c, p, v),
          "a": -v, "b": -p}


def _np_log_z_given_h(params, h, c):
  x = np.einsum("...ij,ijkl,...jk->...il", c, params["W"], h)
  return (np.sum(params["b"] * h, axis=(-2, -1)) +
          np.sum(np.logaddexp(0.0, params["a"] + x), axis=(-2, -1)))


def _np_energy(params, v, h, c):
  return -(np.sum(h * _np_hidden_in(params["W"], v, c), axis=(-2, -1)) +
           np.sum(params["a"] * v, axis=(-2, -1)) +
           np.sum(params["b"] * h, axis=(-2, -1)))


def _exact_expected_cd1(params, data, r, mh):
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  W, a, b = params["W"], params["a"], params["b"]
  vs = reference.binary_states((NV, DV))       # (512, 3, 3)
  hs = reference.binary_states((NH, DH))       # (64, 2, 3)
  c_all = _np_route(W, vs, r)                  # c(v) for every state
  grad_all = _np_free_energy_grads(params, vs, c_all)
  index = {v.tobytes(): n for n, v in enumerate(vs)}
  total = {k: np.zeros_like(x) for k, x in params.items()}
  for v0 in data:
    n0 = index[v0.tobytes()]
    c0 = c_all[n0]
    ph = 1.0 / (1.0 + np.exp(-(b + _np_hidden_in(W, v0, c0))))
    p_h = np.prod(np.where(hs == 1, ph, 1 - ph), axis=(1, 2))   # (64,)
    pv = 1.0 / (1.0 + np.exp(-(a + np.einsum("ij,ijkl,hjk->hil", c0, W, hs))))
    p_v_given_h = np.prod(np.where(vs[None] == 1, pv[:, None], 1 - pv[:, None]),
                          axis=(2, 3))                          # (64, 512)
    if mh:
      # Acceptance of proposal v' from v0 given h (docs/model.md section 6).
      hh = hs[:, None]
      log_alpha = (-_np_energy(params, vs[None], hh, c_all[None])
                   - _np_energy(params, v0, hh, c_all[None])
                   + _np_energy(params, v0, hh, c0)
                   + _np_energy(params, vs[None], hh, c0)
                   + _np_log_z_given_h(params, hh, c0)
                   - _np_log_z_given_h(params, hh, c_all[None]))
      alpha = np.exp(np.minimum(log_alpha, 0.0))              # (64, 512)
      p_move = p_h[:, None] * p_v_given_h * alpha
      p_v1 = p_move.sum(0)
      p_v1[n0] += 1.0 - p_v1.sum()                            # rejections
    else:
      p_v1 = p_h @ p_v_given_h                                # (512,)
    for k in total:
      neg = np.tensordot(p_v1, grad_all[k], axes=1)
      total[k] += grad_all[k][n0] - neg
  return {k: x / len(data) for k, x in total.items()}


@pytest.mark.parametrize("mh", [False, True], ids=["alternation", "mh"])
def test_expected_cd1_gradient_matches_enumeration(mh):
  """Shark-style: the mean of many sampled CD-1 gradients is the exact one.

  Tolerance: each element of the sample mean must lie within 5 standard
  errors (estimated from the samples) of the exact expectation; with 69
  elements a false failure has probability below 1e-4.
  """
  params = _params(4, scale=1.5)
  data = _data()
  exact = _exact_expected_cd1(params, np.asarray(data, np.float64), 3, mh)
  num_samples = 4000
  kernel = (capsjax.mh if mh else capsjax.gibbs)(Routing(3))
  sample = jax.jit(jax.vmap(
      lambda key: capsjax.cd_gradient(key, params, data, kernel=kernel,
                                      k=1)[0]))
  grads = sample(jax.random.split(jax.random.key(5), num_samples))
  for name in params:
    g = np.asarray(grads[name], np.float64)
    mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(num_samples)
    z = np.abs(mean - exact[name]) / np.maximum(se, 1e-7)
    assert z.max() < 5.0, (name, z.max())
    # The test has power: the standard errors are small against the signal.
    assert se.max() < 0.1 * np.abs(exact[name]).max(), name


# ---------------------------------------------------------------------------
# Persistent chains.

GIBBS3 = capsjax.gibbs(Routing(3))


def _bits(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 2, shape),
                     jnp.float32)


def test_persistent_chain_goes_in_and_comes_out():
  params = _params(6)
  data = _data()
  chain = GIBBS3.init(params, jnp.zeros_like(data))
  key = jax.random.key(7)
  _, info = cd_gradient(key, params, data, kernel=GIBBS3, k=5, chain=chain)
  _, info_again = cd_gradient(key, params, data, kernel=GIBBS3, k=5,
                              chain=chain)
  np.testing.assert_array_equal(info.chain.v, info_again.chain.v)
  # The chain starts at zeros, not at the data: CD from data differs.
  _, from_data = cd_gradient(key, params, data, kernel=GIBBS3, k=5)
  assert not np.array_equal(info.chain.v, from_data.chain.v)
  np.testing.assert_allclose(
      info.chain.coefficients,
      capsjax.route_visible(params, info.chain.v, Routing(3)), rtol=1e-6)


PCD_KERNELS = {"gibbs": GIBBS3, "mh": capsjax.mh(Routing(3)),
               "unrouted": capsjax.gibbs(Routing(1))}


@pytest.mark.parametrize("name", sorted(PCD_KERNELS))
def test_persistent_chains_need_not_match_the_batch(name):
  """5 persistent chains for a batch of 14: the positive statistics average
  over the data, the negative ones over the chains, and 5 chains come back
  (from cd_gradient and through train_step)."""
  kernel = PCD_KERNELS[name]
  params = _params(17)
  data = _data()
  chain = kernel.init(params, _bits(18, (5, NV, DV)))
  key = jax.random.key(19)
  grads, info = cd_gradient(key, params, data, kernel=kernel, k=3,
                            chain=chain)
  assert info.chain.v.shape == info.negative.shape == (5, NV, DV)
  assert info.chain.coefficients.shape == (5, NV, NH)
  assert info.negative_coefficients.shape == (5, NV, NH)
  assert info.data_coefficients.shape == (14, NV, NH)
  np.testing.assert_allclose(
      info.chain.coefficients,
      capsjax.route_visible(params, info.chain.v, kernel.routing), rtol=1e-6)
  c_data = capsjax.route_visible(params, data, kernel.routing)
  expected = jax.grad(
      lambda p: _mean_free_energy(p, data, c_data)
      - _mean_free_energy(p, info.negative, info.negative_coefficients)
  )(params)
  for n in params:
    np.testing.assert_allclose(grads[n], expected[n], rtol=1e-5, atol=1e-6,
                               err_msg=n)
  opt = capsjax.sgd(0.05)
  state = capsjax.init_train_state(params, opt, chain=chain)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=kernel, k=3))
  for _ in range(2):
    state, info = step(key, state, data)
    assert state.chain.v.shape == (5, NV, DV)
    assert state.chain.coefficients.shape == (5, NV, NH)
    np.testing.assert_array_equal(state.chain.v, info.chain.v)
  assert int(state.step) == 2


# ---------------------------------------------------------------------------
# The optax training step.


def test_train_step_is_sgd_on_the_cd_gradient():
  params = _params(8)
  data = _data()
  key = jax.random.key(9)
  opt = capsjax.sgd(0.1, momentum=capsjax.momentum_schedule(0.5, 0.9, 2),
                    weight_decay=0.01)
  state = capsjax.init_train_state(params, opt)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=GIBBS3, k=1))
  # Plain-loop reference: momentum buffer m <- mu m + g, theta <- theta - lr m.
  ref_params = jax.tree.map(np.asarray, params)
  ref_m = jax.tree.map(np.zeros_like, ref_params)
  for t in range(4):
    g, _ = cd_gradient(jax.random.fold_in(key, t), state.params, data,
                       kernel=GIBBS3, k=1)
    mu = 0.5 if t < 2 else 0.9
    for n in ref_params:
      g_n = np.asarray(g[n]) + (0.01 * ref_params[n] if n == "W" else 0.0)
      ref_m[n] = mu * ref_m[n] + g_n
      ref_params[n] = ref_params[n] - 0.1 * ref_m[n]
    state, _ = step(key, state, data)
    for n in ref_params:
      np.testing.assert_allclose(state.params[n], ref_params[n], rtol=1e-4,
                                 atol=1e-5)
  assert int(state.step) == 4
  lr = state.opt_state[1].hyperparams["learning_rate"]
  np.testing.assert_allclose(lr, 0.1)


def test_train_step_compiles_once():
  """Fresh keys, batches and a rebuilt (equal) kernel reuse the one trace.
  Traces are counted by a Python side effect inside the jitted function."""
  params = _params(10)
  data = _data()
  opt = optax.adam(1e-3)
  traces = []

  def counted(key, state, batch, *, kernel):
    traces.append(kernel)
    return capsjax.train_step(key, state, batch, optimizer=opt, kernel=kernel,
                              k=1)

  step = jax.jit(counted, static_argnames="kernel")
  kernel = capsjax.mh(Routing(3))
  state = capsjax.init_train_state(params, opt,
                                   chain=kernel.init(params, data))
  key = jax.random.key(11)
  state, info = step(key, state, data, kernel=kernel)
  for t in range(3):
    state, info = step(jax.random.key(t), state, data[::-1],
                       kernel=capsjax.mh(Routing(3)))
  assert len(traces) == 1
  assert state.chain is not None and 0.0 <= float(info.acceptance_rate) <= 1.0
  assert int(state.step) == 4


# ---------------------------------------------------------------------------
# Monitors.

MONITOR_KERNELS = {
    "gibbs": capsjax.gibbs(Routing(3)),
    "mh": capsjax.mh(Routing(3)),
    "gaussian_unrouted": capsjax.gibbs(Routing(1), visible="gaussian"),
}


@pytest.mark.parametrize("name", sorted(MONITOR_KERNELS))
def test_monitors_match_independent_computations(name):
  kernel = MONITOR_KERNELS[name]
  visible, r = kernel.visible, kernel.routing
  with jax.enable_x64(True):
    params = _params(12, dtype=jnp.float64)
    data = _data(jnp.float64)
    _, info = cd_gradient(jax.random.key(0), params, data, kernel=kernel,
                          k=2)
    monitors = cd_monitors(params, data, info, kernel=kernel)
    assert isinstance(monitors, capsjax.CDMonitors)
    c = np.asarray(capsjax.route_visible(params, data, r))
    p = capsjax.hidden_probs(params, data, c)
    recon = capsjax.visible_probs(params, p, c, visible=visible)
    np.testing.assert_allclose(monitors.reconstruction_error,
                               np.mean((np.asarray(data) - recon) ** 2),
                               rtol=1e-10)
    # The negatives' coefficients are c(v_model): both kernels reroute.
    c_neg = capsjax.route_visible(params, info.negative, r)
    gap = (np.mean(capsjax.free_energy(params, data, c, visible=visible))
           - np.mean(capsjax.free_energy(params, info.negative, c_neg,
                                         visible=visible)))
    np.testing.assert_allclose(monitors.free_energy_gap, gap, rtol=1e-10,
                               atol=1e-10)
    ent = -np.sum(c * np.log(c), -1).mean()
    np.testing.assert_allclose(monitors.routing_entropy, ent, rtol=1e-10)
    np.testing.assert_array_equal(monitors.acceptance_rate,
                                  info.acceptance_rate)
    if kernel.name == "mh":  # routed MH rejects some proposals
      assert 0.0 < float(monitors.acceptance_rate) < 1.0
    else:
      np.testing.assert_allclose(monitors.acceptance_rate, 1.0)


@pytest.mark.parametrize("r", [1, 3])
def test_monitors_are_separate_from_the_step(r):
  """0.1's `monitors=False` returned NaN placeholders. In 0.2 CDInfo holds
  no monitors (only what they need), `cd_monitors` computes them, and
  computing them in the same program changes nothing of the step."""
  kernel = capsjax.gibbs(Routing(r))
  params = _params(15)
  data = _data()
  key = jax.random.key(16)
  grads, info = cd_gradient(key, params, data, kernel=kernel, k=2)
  assert capsjax.CDInfo._fields == ("chain", "data_coefficients", "negative",
                                    "negative_coefficients", "acceptance_rate")
  for leaf in jax.tree.leaves(info):
    assert np.all(np.isfinite(leaf))

  @jax.jit
  def with_monitors(key):
    g, i = capsjax.cd_gradient(key, params, data, kernel=kernel, k=2)
    return g, i, capsjax.cd_monitors(params, data, i, kernel=kernel)

  grads2, info2, monitors = with_monitors(key)
  # The samples are the same draws; the float results the same up to the
  # rounding of another XLA program (fusion and common subexpressions).
  np.testing.assert_array_equal(info2.chain.v, info.chain.v)
  np.testing.assert_array_equal(info2.negative, info.negative)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               (grads2, info2), (grads, info))
  assert all(np.isfinite(m) for m in monitors)
  with pytest.raises(TypeError, match="monitors"):
    capsjax.cd_gradient(key, params, data, kernel=kernel, monitors=False)


def test_through_routing_with_an_unrouted_kernel():
  """Any kernel of the unrouted layer is exact, so through_routing is
  accepted; nothing depends on c there, so it is the ordinary gradient."""
  kernel = capsjax.gibbs(Routing(1))
  assert kernel.exact
  params = _params(20)
  data = _data()
  key = jax.random.key(21)
  through, _ = cd_gradient(key, params, data, kernel=kernel,
                           through_routing=True)
  plain, _ = cd_gradient(key, params, data, kernel=kernel)
  for n in params:
    np.testing.assert_allclose(through[n], plain[n], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# The effective-weight parameterization and initialization.


def test_effective_weights_is_sgd_on_w_over_s():
  """Optimizing U = W / s with plain SGD moves W by lr * s^2 * dF/dW."""
  params = _params(13)
  data = _data()
  s, lr = 4.0, 0.01
  opt = capsjax.effective_weights(optax.sgd(lr), s)
  state = capsjax.init_train_state(params, opt)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=GIBBS3))
  key = jax.random.key(14)
  new, _ = step(key, state, data)
  g, _ = cd_gradient(jax.random.fold_in(key, 0), params, data, kernel=GIBBS3)
  np.testing.assert_allclose(new.params["W"], params["W"] - lr * s**2 * g["W"],
                             rtol=1e-5, atol=1e-6)
  for n in ("a", "b"):
    np.testing.assert_allclose(new.params[n], params[n] - lr * g[n],
                               rtol=1e-5, atol=1e-7)


def test_effective_weights_with_momentum_and_decay_matches_loop():
  """sgd(lr, momentum, weight_decay) wrapped in effective_weights(., s):
  a plain loop over U = W / s with gradient s dL/dW, decay on U, mapped
  back W = s U."""
  params = _params(22)
  data = _data()
  key = jax.random.key(23)
  s, lr, wd = 4.0, 0.02, 0.05
  opt = capsjax.effective_weights(
      capsjax.sgd(lr, momentum=capsjax.momentum_schedule(0.5, 0.9, 2),
                  weight_decay=wd), s)
  state = capsjax.init_train_state(params, opt)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   kernel=GIBBS3))
  u = {"W": np.asarray(params["W"], np.float64) / s,
       "a": np.asarray(params["a"], np.float64),
       "b": np.asarray(params["b"], np.float64)}
  m = {n: np.zeros_like(x) for n, x in u.items()}
  for t in range(4):
    g, _ = cd_gradient(jax.random.fold_in(key, t), state.params, data,
                       kernel=GIBBS3)
    mu = 0.5 if t < 2 else 0.9
    for n in u:
      g_u = (s * np.asarray(g[n], np.float64) + wd * u[n] if n == "W" else
             np.asarray(g[n], np.float64))
      m[n] = mu * m[n] + g_u
      u[n] = u[n] - lr * m[n]
    state, _ = step(key, state, data)
    np.testing.assert_allclose(state.params["W"], s * u["W"], rtol=1e-4,
                               atol=1e-5)
    for n in ("a", "b"):
      np.testing.assert_allclose(state.params[n], u[n], rtol=1e-4, atol=1e-5)


def test_effective_weights_with_unit_scale_is_the_bare_optimizer():
  params = _params(24)
  data = _data()
  key = jax.random.key(25)
  for make in (lambda: capsjax.sgd(0.1, momentum=0.5, weight_decay=0.01),
               lambda: capsjax.adam(0.01, weight_decay=0.01)):
    results = []
    for opt in (make(), capsjax.effective_weights(make(), 1.0)):
      state = capsjax.init_train_state(params, opt)
      step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                       kernel=GIBBS3))
      for _ in range(3):
        state, _ = step(key, state, data)
      results.append(state)
    bare, wrapped = results
    for n in params:
      np.testing.assert_allclose(wrapped.params[n], bare.params[n],
                                 rtol=1e-6, atol=1e-7, err_msg=n)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6,
                                                         atol=1e-7),
                 wrapped.opt_state, bare.opt_state)


def test_effective_weights_adam_normalizes_the_gradient_of_u():
  """Adam's first step moves each parameter of its input by lr (sign of the
  gradient; |g| >> eps here): U by lr, so W = s U by s lr."""
  params = _params(26)
  data = _data()
  key = jax.random.key(27)
  s, lr = 4.0, 1e-3
  opt = capsjax.effective_weights(optax.adam(lr, eps=1e-12), s)
  state = capsjax.init_train_state(params, opt)
  new, _ = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                     kernel=GIBBS3))(key, state, data)
  g, _ = cd_gradient(jax.random.fold_in(key, 0), params, data, kernel=GIBBS3)
  big = np.abs(np.asarray(g["W"])) > 1e-4
  assert big.mean() > 0.9
  np.testing.assert_allclose(
      np.asarray(new.params["W"] - params["W"])[big],
      -s * lr * np.sign(np.asarray(g["W"]))[big], rtol=1e-3)


def test_init_params_follows_the_practical_guide():
  rng = np.random.default_rng(28)
  rates = rng.uniform(0.05, 0.95, size=(10, 4))
  rates[0, 0], rates[0, 1] = 0.0, 1.0  # never on, always on: clipped
  data = jnp.asarray(rng.uniform(size=(2000, 10, 4)) < rates, jnp.float32)
  key = jax.random.key(29)
  std, scale = 0.01, 4.0
  params = capsjax.init_params(key, 10, 4, 30, 16, weight_std=std,
                               weight_scale=scale, data=data)
  assert params["W"].shape == (10, 30, 16, 4)
  assert params["a"].shape == (10, 4) and params["b"].shape == (30, 16)
  assert all(x.dtype == jnp.float32 for x in params.values())
  W = np.asarray(params["W"], np.float64)
  # 19,200 draws of N(0, (s std)^2): the sample std's relative standard
  # error is 1/sqrt(2 n) = 0.5%; 3% is 6 of them. The mean: 5 standard
  # errors.
  assert abs(W.std() / (scale * std) - 1.0) < 0.03
  assert abs(W.mean()) < 5 * scale * std / np.sqrt(W.size)
  p = np.clip(np.asarray(data, np.float64).mean(0), 1e-3, 1 - 1e-3)
  np.testing.assert_allclose(params["a"], np.log(p / (1 - p)), rtol=1e-4)
  assert abs(float(params["a"][0, 0]) + np.log(999.0)) < 1e-3
  assert abs(float(params["a"][0, 1]) - np.log(999.0)) < 1e-3
  np.testing.assert_array_equal(params["b"], 0.0)
  np.testing.assert_allclose(params["a"],
                             capsjax.visible_bias_from_data(data), rtol=1e-6)
  # The scale multiplies the same draws; no data: zero visible biases.
  unit = capsjax.init_params(key, 10, 4, 30, 16, weight_std=std)
  np.testing.assert_allclose(params["W"], scale * unit["W"], rtol=1e-6)
  np.testing.assert_array_equal(unit["a"], 0.0)
  # Gaussian units: the visible biases are the data means.
  gauss = capsjax.init_params(key, 10, 4, 30, 16, data=3.0 + data,
                              visible="gaussian")
  np.testing.assert_allclose(gauss["a"], 3.0 + np.asarray(data).mean(0),
                             rtol=1e-5)
