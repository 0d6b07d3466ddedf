"""cd_gradient: hand-written statistics, autodiff, and the exact expected CD-1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import capsjax
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
    "k", "num_iterations", "reroute", "mh", "through_routing",
    "mean_field_negative", "visible", "monitors"))


def _mean_free_energy(params, v, c, visible="bernoulli"):
  return jnp.mean(capsjax.free_energy(params, v, c, visible=visible))


CD_MODES = {
    "cd1": dict(k=1),
    "cd3_no_reroute": dict(k=3, reroute=False),
    "mh": dict(k=2, mh=True),
    "mean_field": dict(k=1, mean_field_negative=True),
    "unrouted": dict(k=1, num_iterations=1),
}


@pytest.mark.parametrize("mode", sorted(CD_MODES))
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_hand_written_statistics_equal_autodiff(mode, visible):
  with jax.enable_x64(True):
    params = _params(0, dtype=jnp.float64)
    v = _data(jnp.float64)
    kwargs = dict(num_iterations=3, visible=visible) | CD_MODES[mode]
    key = jax.random.key(1)
    grads, info = cd_gradient(params, key, v, **kwargs)
    r = kwargs["num_iterations"]
    c_data = capsjax.route_visible(params, v, r)
    v_neg, c_neg = info.chain
    if kwargs.get("mean_field_negative"):
      # The negatives are the last proposal's means, rerouted: rerun the
      # chain with cd_gradient's key to get them.
      _, infos = capsjax.run_chain(key, capsjax.init_chain(params, v, r),
                                   params, kwargs["k"], num_iterations=r,
                                   visible=visible)
      v_neg = infos.last.visible_mean
      c_neg = capsjax.route_visible(params, v_neg, r)
    def objective(p):
      return (_mean_free_energy(p, v, c_data, visible) -
              _mean_free_energy(p, v_neg, c_neg, visible))
    expected = jax.grad(objective)(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected[name], rtol=1e-9,
                                 atol=1e-12, err_msg=name)
    np.testing.assert_allclose(info.free_energy_gap, objective(params),
                               rtol=1e-10)


def test_through_routing_is_autodiff_of_routed_free_energy():
  with jax.enable_x64(True):
    params = _params(2, dtype=jnp.float64)
    v = _data(jnp.float64)
    grads, info = cd_gradient(params, jax.random.key(3), v, k=2,
                                      mh=True, through_routing=True)
    v_neg = info.chain.v

    def routed_f(p, x):  # F(x; c(x)) with c computed by the plain loop
      c = capsjax.route(jnp.einsum("ijkl,bil->bijk", p["W"], x), 3)
      return jnp.mean(capsjax.free_energy(p, x, c.coefficients))

    expected = jax.grad(lambda p: routed_f(p, v) - routed_f(p, v_neg))(params)
    for name in params:
      np.testing.assert_allclose(grads[name], expected[name], rtol=1e-9,
                                 atol=1e-12, err_msg=name)
    # Routing matters: the stop-gradient rule differs on the same samples.
    c_data = capsjax.route_visible(params, v, 3)
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
      # Acceptance of proposal v' from v0 given h (MODEL.md section 6).
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
  sample = jax.jit(jax.vmap(
      lambda key: capsjax.cd_gradient(params, key, data, k=1,
                                      num_iterations=3, mh=mh)[0]))
  grads = sample(jax.random.split(jax.random.key(5), num_samples))
  for name in params:
    g = np.asarray(grads[name], np.float64)
    mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(num_samples)
    z = np.abs(mean - exact[name]) / np.maximum(se, 1e-7)
    assert z.max() < 5.0, (name, z.max())
    # The test has power: the standard errors are small against the signal.
    assert se.max() < 0.1 * np.abs(exact[name]).max(), name


# ---------------------------------------------------------------------------
# Persistent chains and the optax training step.


def test_persistent_chain_goes_in_and_comes_out():
  params = _params(6)
  data = _data()
  chain = capsjax.init_chain(params, jnp.zeros_like(data), 3)
  _, info = cd_gradient(params, jax.random.key(7), data, k=5,
                                chain=chain)
  _, info_again = cd_gradient(params, jax.random.key(7), data, k=5,
                                      chain=chain)
  np.testing.assert_array_equal(info.chain.v, info_again.chain.v)
  # The chain starts at zeros, not at the data: CD from data differs.
  _, from_data = cd_gradient(params, jax.random.key(7), data, k=5)
  assert not np.array_equal(info.chain.v, from_data.chain.v)
  np.testing.assert_allclose(
      info.chain.coefficients, capsjax.route_visible(params, info.chain.v, 3),
      rtol=1e-6)


def test_train_step_is_sgd_on_the_cd_gradient():
  params = _params(8)
  data = _data()
  key = jax.random.key(9)
  opt = capsjax.sgd(0.1, momentum=capsjax.momentum_schedule(0.5, 0.9, 2),
                    weight_decay=0.01)
  state = capsjax.init_train_state(params, opt)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt, k=1))
  # Plain-loop reference: momentum buffer m <- mu m + g, theta <- theta - lr m.
  ref_params = jax.tree.map(np.asarray, params)
  ref_m = jax.tree.map(np.zeros_like, ref_params)
  for t in range(4):
    g, _ = cd_gradient(state.params, jax.random.fold_in(key, t), data,
                               k=1)
    mu = 0.5 if t < 2 else 0.9
    for n in ref_params:
      g_n = np.asarray(g[n]) + (0.01 * ref_params[n] if n == "W" else 0.0)
      ref_m[n] = mu * ref_m[n] + g_n
      ref_params[n] = ref_params[n] - 0.1 * ref_m[n]
    state, _ = step(state, key, data)
    for n in ref_params:
      np.testing.assert_allclose(state.params[n], ref_params[n], rtol=1e-4,
                                 atol=1e-5)
  assert int(state.step) == 4
  lr = state.opt_state[1].hyperparams["learning_rate"]
  np.testing.assert_allclose(lr, 0.1)


def test_train_step_compiles_once():
  params = _params(10)
  data = _data()
  opt = optax.adam(1e-3)
  state = capsjax.init_train_state(params, opt, persistent_chains=data)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt, k=1,
                                   mh=True))
  key = jax.random.key(11)
  state, info = step(state, key, data)
  size = step._cache_size()
  for _ in range(3):
    state, info = step(state, key, data)
  assert step._cache_size() == size
  assert state.chain is not None and 0.0 <= float(info.acceptance_rate) <= 1.0


def test_info_fields():
  params = _params(12)
  data = _data()
  _, info = cd_gradient(params, jax.random.key(0), data, k=1)
  c = capsjax.route_visible(params, data, 3)
  p = capsjax.hidden_probs(params, data, c)
  recon = capsjax.visible_probs(params, p, c)
  np.testing.assert_allclose(info.reconstruction_error,
                             np.mean((np.asarray(data) - recon) ** 2),
                             rtol=1e-5)
  ent = -np.sum(np.asarray(c) * np.log(np.asarray(c)), -1).mean()
  np.testing.assert_allclose(info.routing_entropy, ent, rtol=1e-5)
  np.testing.assert_allclose(info.acceptance_rate, 1.0)


@pytest.mark.parametrize("r", [1, 3])
def test_monitors_off_changes_only_the_monitors(r):
  params = _params(15)
  data = _data()
  key = jax.random.key(16)
  grads, info = cd_gradient(params, key, data, k=2, num_iterations=r)
  lean_grads, lean = cd_gradient(params, key, data, k=2, num_iterations=r,
                                 monitors=False)
  jax.tree.map(np.testing.assert_array_equal, (grads, info.chain),
               (lean_grads, lean.chain))
  assert np.isnan(lean.reconstruction_error) and np.isnan(lean.free_energy_gap)
  assert np.isfinite(info.reconstruction_error)
  np.testing.assert_array_equal(lean.routing_entropy, info.routing_entropy)


def test_weight_scale_is_sgd_on_w_over_s():
  """Optimizing U = W / s with plain SGD moves W by lr * s^2 * dF/dW."""
  params = _params(13)
  data = _data()
  s, lr = 4.0, 0.01
  opt = optax.sgd(lr)
  state = capsjax.init_train_state(params, opt, weight_scale=s)
  step = jax.jit(functools.partial(capsjax.train_step, optimizer=opt,
                                   weight_scale=s))
  key = jax.random.key(14)
  new, _ = step(state, key, data)
  g, _ = cd_gradient(params, jax.random.fold_in(key, 0), data)
  np.testing.assert_allclose(new.params["W"], params["W"] - lr * s**2 * g["W"],
                             rtol=1e-5, atol=1e-6)
  for n in ("a", "b"):
    np.testing.assert_allclose(new.params[n], params[n] - lr * g[n],
                               rtol=1e-5, atol=1e-7)
