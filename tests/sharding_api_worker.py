"""Every public function on a batch sharded over 8 CPU devices.

Run by test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the device count is
fixed when JAX starts):

  python -m tests.sharding_api_worker

For routed (r = 3) and unrouted (r = 1) layers it computes each function on
one device, then on the same batch placed with
`NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))` (explicit axes,
the default; with and without `jax.set_mesh`) and with `AxisType.Auto`, and
checks that the results agree. Inside `shard_map` it checks that the
deterministic functions give each shard's part. Routing chunks are made
tiny, so that the one-device reference takes the chunked CPU path and the
sharded batch the unchunked one. Exits non-zero with the first mismatch.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

import capsjax
from capsjax import routing as routing_lib
import capsjax.data

BATCH = 16


def functions(kernel):
  """name -> f(key, params, v) for the public calls on a batch v."""
  r, visible = kernel.routing, kernel.visible

  def cd(key, params, v, **kw):
    grads, info = capsjax.cd_gradient(key, params, v, kernel=kernel, k=2, **kw)
    return grads, info, capsjax.cd_monitors(params, v, info, kernel=kernel)

  def train(key, params, v):
    opt = capsjax.effective_weights(capsjax.sgd(0.1, momentum=0.5), 8.0)
    state = capsjax.init_train_state(params, opt, chain=kernel.init(params, v))
    return capsjax.train_step(key, state, v, optimizer=opt, kernel=kernel)

  def hidden(params, v):
    return capsjax.hidden_probs(params, v, capsjax.route_visible(params, v, r))

  fns = {
      "predictions": lambda key, p, v: capsjax.predictions(p, v),
      "route": lambda key, p, v: capsjax.route(capsjax.predictions(p, v), r),
      "route_visible": lambda key, p, v: capsjax.route_visible(p, v, r),
      "routed_free_energy": lambda key, p, v: capsjax.routed_free_energy(
          p, v, r, visible=visible),
      "energy": lambda key, p, v: capsjax.energy(
          p, v, hidden(p, v), capsjax.route_visible(p, v, r)),
      "visible_probs": lambda key, p, v: capsjax.visible_probs(
          p, hidden(p, v), capsjax.route_visible(p, v, r)),
      "log_prob": lambda key, p, v: capsjax.log_prob(p, v, r, 3.0),
      "kernel.step": lambda key, p, v: kernel.step(key, kernel.init(p, v), p),
      "run_chain": lambda key, p, v: capsjax.run_chain(
          key, kernel, kernel.init(p, v), p, 3),
      "cd_gradient": cd,
      "cd_gradient(pcd)": lambda key, p, v: cd(
          key, p, v, chain=kernel.init(p, v[::-1])),
      "train_step": train,
  }
  if kernel.exact and r.routed:
    fns["cd_gradient(through_routing)"] = functools.partial(
        cd, through_routing=True)
  return fns


def per_shard(kernel):
  """Deterministic functions whose per-shard result is the global one's
  shard (batch means excepted: those are per shard by design)."""
  r = kernel.routing
  return {
      "route_visible": lambda p, v: capsjax.route_visible(p, v, r),
      "routed_free_energy": lambda p, v: capsjax.routed_free_energy(p, v, r),
  }


def assert_close(got, want, what):
  flat_got, tree_got = jax.tree.flatten(got)
  flat_want, tree_want = jax.tree.flatten(want)
  assert tree_got == tree_want, (what, tree_got, tree_want)
  for g, w in zip(flat_got, flat_want):
    g, w = np.asarray(g), np.asarray(w)
    if g.dtype == bool:
      np.testing.assert_array_equal(g, w, err_msg=what)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=what)


def main():
  assert jax.device_count() == 8, jax.devices()
  routing_lib.CHUNK_BYTES = 3 * 4 * 4 * 6 * 4 * 3  # 3 examples a chunk
  routing_lib.CHUNK_ABOVE_BYTES = 0
  key = jax.random.key(0)
  params = capsjax.init_params(key, 4, 3, 4, 6, weight_std=1.0)
  v = jax.random.bernoulli(jax.random.key(1), 0.4, (BATCH, 4, 3)).astype(
      jnp.float32)
  explicit = jax.make_mesh((8,), ("data",))
  auto = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  assert explicit.axis_types == (AxisType.Explicit,), explicit.axis_types
  checked = 0
  for kernel in (capsjax.gibbs(capsjax.Routing(1)),
                 capsjax.gibbs(capsjax.Routing(3)),
                 capsjax.mh(capsjax.Routing(3, temperature=2.0))):
    # One program for all the functions: one compilation per placement.
    fns = functions(kernel)
    f = jax.jit(lambda key, p, x: {name: g(key, p, x)
                                   for name, g in fns.items()})
    want = f(key, params, v)
    for mesh, context in ((explicit, contextlib.nullcontext()),
                          (explicit, jax.set_mesh(explicit)),
                          (auto, contextlib.nullcontext())):
      with context:
        vs = jax.device_put(v, NamedSharding(mesh, P("data")))
        ps = jax.device_put(params, NamedSharding(mesh, P()))
        got = f(key, ps, vs)
      for name in fns:
        assert_close(got[name], want[name],
                     f"{name} with {kernel.name}({kernel.routing}) on {mesh}")
        checked += 1
    for name, f in per_shard(kernel).items():
      want = jax.jit(f)(params, v)
      with jax.set_mesh(explicit):
        vs = jax.device_put(v, P("data"))
        got = jax.jit(jax.shard_map(f, in_specs=(P(), P("data")),
                                    out_specs=P("data")))(params, vs)
      assert_close(got, want, f"{name} in shard_map, {kernel.routing}")
      checked += 1
  # capsjax.data's patch capsules keep the batch's sharding.
  images = jax.random.uniform(key, (BATCH, 8, 8))
  def patches(x):
    v = capsjax.data.binarize(key, capsjax.data.images_to_capsules(x, 4),
                              "stochastic")
    return v, capsjax.data.capsules_to_images(v, 4)
  want = jax.jit(patches)(images)
  with jax.set_mesh(explicit):
    got = jax.jit(patches)(jax.device_put(images, P("data")))
  assert_close(got, want, "images_to_capsules / capsules_to_images")
  assert got[0].sharding.spec[0] == "data", got[0].sharding
  checked += 1
  print(f"{checked} sharded calls agree with one device")


if __name__ == "__main__":
  main()
