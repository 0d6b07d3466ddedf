"""The fast paths: one compilation per training run, and the same numbers.

Speed itself is measured in benchmarks/cd_benchmark.py, never asserted here.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import capsjax
from capsjax import energies
from capsjax import routing
from tests import reference

NV, DV, NH, DH = 3, 2, 2, 3


def _params(seed, nv=NV, dv=DV, nh=NH, dh=DH):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"W": jax.random.normal(k[0], (nv, nh, dh, dv)),
          "a": 0.5 * jax.random.normal(k[1], (nv, dv)),
          "b": 0.5 * jax.random.normal(k[2], (nh, dh))}


def _binary(seed, shape):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, shape).astype(
      jnp.float32)


class _CompileCounter:
  """Counts XLA compilations (jax.monitoring's backend-compile events)."""

  def __init__(self):
    self.count = 0

  def __call__(self, event, *args, **kwargs):
    del args, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


@pytest.fixture
def compile_counter():
  counter = _CompileCounter()
  jax.monitoring.register_event_duration_secs_listener(counter)
  yield counter
  jax.monitoring.unregister_event_duration_listener(counter)


@pytest.mark.parametrize("num_iterations,persistent,mh", [
    # The shared-coefficient (plain RBM) path: its persistent chain must
    # keep the batched shape `init` gave it, through the scan and the MH step.
    (1, True, True),
    (3, False, False),  # routed
])
def test_train_step_compiles_once(compile_counter, num_iterations,
                                  persistent, mh):
  params = _params(0)
  opt = optax.sgd(0.1)
  batch = 4
  make_kernel = capsjax.mh if mh else capsjax.gibbs
  kernel = make_kernel(capsjax.Routing(num_iterations))
  chain = (kernel.init(params, _binary(1, (batch, NV, DV))) if persistent
           else None)
  state = capsjax.init_train_state(params, opt, chain=chain)
  traces = []

  def counted(key, state, batch, *, kernel):
    traces.append(kernel)  # runs only while jit traces
    return capsjax.train_step(key, state, batch, optimizer=opt, kernel=kernel,
                              k=2)

  step = jax.jit(counted, static_argnames="kernel")
  state, _ = step(jax.random.key(0), state, _binary(2, (batch, NV, DV)),
                  kernel=kernel)
  compiled = compile_counter.count
  for t in range(3):  # fresh data, keys and (equal) kernels: no recompile
    state, info = step(jax.random.key(t + 1), state,
                       _binary(t + 3, (batch, NV, DV)),
                       kernel=make_kernel(capsjax.Routing(num_iterations)))
  jax.block_until_ready(state)
  assert len(traces) == 1
  assert compile_counter.count == compiled
  assert int(state.step) == 4
  assert np.isfinite(float(info.acceptance_rate))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  if persistent:
    assert state.chain.coefficients.shape == (batch, NV, NH)
    assert info.chain.coefficients.shape == (batch, NV, NH)


@pytest.fixture
def small_chunks(monkeypatch):
  """Routes in chunks of 2 examples, so batches of 5 are padded and looped."""
  monkeypatch.setattr(routing, "CHUNK_BYTES", 2 * NV * NH * DH * 4)
  monkeypatch.setattr(routing, "CHUNK_ABOVE_BYTES", 0)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_chunked_routing_equals_procedure_1(small_chunks, r):
  del small_chunks
  params = _params(1)
  v = np.asarray(_binary(5, (5, NV, DV)), np.float64)
  W = np.asarray(params["W"], np.float64)
  expected = np.stack([reference.route(reference.predictions(W, x), r)
                       for x in v])
  fused = jax.jit(capsjax.route_visible, static_argnums=2)(
      params, jnp.asarray(v, jnp.float32), capsjax.Routing(r))
  np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)
  u = np.stack([reference.predictions(W, x) for x in v])
  two_step = jax.jit(capsjax.route, static_argnums=1)(
      jnp.asarray(u, jnp.float32), capsjax.Routing(r))
  np.testing.assert_allclose(two_step.coefficients, expected, rtol=1e-5,
                             atol=1e-6)
  s = np.einsum("bij,bijk->bjk", expected, u)
  np.testing.assert_allclose(two_step.inputs, s, rtol=1e-5, atol=1e-5)


def test_routing_chunks_only_large_batches_on_a_cpu(monkeypatch):
  """The CPU cache trick is conditional: a batch whose votes fit
  `CHUNK_ABOVE_BYTES` is routed at once, a larger one in chunks, and on a
  GPU or TPU (where `lax.map` would run the chunks one after another) never;
  that accelerator path, run here, gives the chunked path's numbers."""
  per_example = 49 * 32 * 16 * 4  # 49x16 -> 32x16 float32 votes
  x = jnp.zeros((100, 49, 16))
  assert routing._chunk_size(x, per_example) is None  # 10 MB: at once
  big = jnp.zeros((1000, 49, 16))
  chunk = routing._chunk_size(big, per_example)
  assert chunk is not None and chunk * per_example <= routing.CHUNK_BYTES

  params = _params(3)
  v = _binary(7, (5, NV, DV))
  r3 = capsjax.Routing(3)
  monkeypatch.setattr(routing, "CHUNK_ABOVE_BYTES", 0)
  monkeypatch.setattr(routing, "CHUNK_BYTES", 2 * NV * NH * DH * 4)
  assert routing._chunk_size(v, NV * NH * DH * 4) == 2
  chunked = capsjax.route_from_visible(params, v, r3)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert routing._chunk_size(v, NV * NH * DH * 4) is None
  assert routing._chunk_size(big, per_example) is None
  at_once = capsjax.route_from_visible(params, v, r3)
  for got, want in zip(at_once, chunked):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_routing_gradient_and_vmap(small_chunks):
  del small_chunks
  r2 = capsjax.Routing(2)
  params = _params(2)
  v = _binary(6, (2, 5, NV, DV))  # two leading axes

  @jax.jit
  def check(W):
    p = {**params, "W": W}
    c = capsjax.route_visible(p, v, r2)
    per_row = jax.vmap(lambda x: capsjax.route_visible(p, x, r2))(v)

    def loss(W, chunked):
      q = {**params, "W": W}
      c = (capsjax.route_visible(q, v, r2) if chunked else capsjax.route(
          jnp.einsum("ijkl,...il->...ijk", W, v), r2).coefficients)
      return jnp.sum(jnp.sin(c))
    return c, per_row, jax.grad(loss)(W, True), jax.grad(loss)(W, False)

  c, per_row, chunked, plain = check(params["W"])
  np.testing.assert_allclose(per_row, c, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(chunked, plain, rtol=1e-4, atol=1e-6)


def _loop_statistics(v, p, c):
  """sum_b c[b, i, j] p[b, j] v[b, i]^T by explicit loops."""
  b_, nv, dv = v.shape
  nh, dh = p.shape[1:]
  out = np.zeros((nv, nh, dh, dv))
  for b in range(b_):
    for i in range(nv):
      for j in range(nh):
        out[i, j] += c[b, i, j] * np.outer(p[b, j], v[b, i])
  return out


def _loop_inputs(W, v, c):
  """s[b, j] = sum_i c[b, i, j] W[i, j] v[b, i] and x[b, i] = sum_j c W^T h."""
  return np.stack([sum(c[b, i, :, None] * reference.predictions(W, v[b])[i]
                       for i in range(W.shape[0])) for b in range(len(v))])


@pytest.mark.parametrize("shared", [False, True])
def test_contractions_equal_loops(shared):
  params = _params(3)
  W = np.asarray(params["W"], np.float64)
  v = np.asarray(_binary(7, (4, NV, DV)), np.float64)
  h = np.asarray(_binary(8, (4, NH, DH)), np.float64)
  c = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(9),
                                                  (4, NV, NH))), np.float64)
  if shared:
    c = np.broadcast_to(c[0], c.shape)
  c_arg = jnp.asarray(c[0] if shared else c, jnp.float32)

  @jax.jit
  def contractions(v, h, c):
    return (energies.hidden_input(params, v, c),
            energies.visible_input(params, h, c),
            energies.interaction_statistics(v, h, c))

  s, x, stats = contractions(jnp.asarray(v, jnp.float32),
                             jnp.asarray(h, jnp.float32), c_arg)
  np.testing.assert_allclose(s, _loop_inputs(W, v, c), rtol=1e-5, atol=1e-5)
  expected_x = np.stack([[sum(c[b, i, j] * W[i, j].T @ h[b, j]
                              for j in range(NH)) for i in range(NV)]
                         for b in range(4)])
  np.testing.assert_allclose(x, expected_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats, _loop_statistics(v, h, c), rtol=1e-5,
                             atol=1e-5)


def test_shared_coefficients_cd_equals_routed_one_iteration():
  """r = 1 runs on unbatched c; its gradient is the batched-c formula's."""
  params = _params(4)
  v = _binary(10, (6, NV, DV))
  cd = jax.jit(capsjax.cd_gradient, static_argnames=("kernel", "k"))
  grads, info = cd(jax.random.key(11), params, v,
                   kernel=capsjax.gibbs(capsjax.Routing(1)), k=1)
  v_neg = info.chain.v
  c = jnp.full((6, NV, NH), 1.0 / NH)
  # The one ChainState layout: batched like v, also for r = 1.
  assert info.chain.coefficients.shape == (6, NV, NH)
  np.testing.assert_allclose(info.chain.coefficients, c)
  np.testing.assert_allclose(info.data_coefficients, c)

  def gap(p):
    return (jnp.mean(capsjax.free_energy(p, v, c))
            - jnp.mean(capsjax.free_energy(p, v_neg, c)))
  expected = jax.jit(jax.grad(gap))(params)
  for name in params:
    np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5,
                               atol=1e-6)
