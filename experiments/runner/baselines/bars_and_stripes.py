"""Every training mode on 2x2 bars-and-stripes, scored by exact
log-likelihood (docs/model.md section 5; the command:
experiments/bars_and_stripes.py)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import capsjax

NUM_HIDDEN, HIDDEN_DIM, ROUTED = 2, 4, 3


# name -> (options, persistent chains?): `num_iterations`, the kernel (`mh`,
# else Gibbs with `reroute`) and `through_routing`. Each mode's model is
# scored with its own `num_iterations`.
MODES = {
    "unrouted (r=1)": (dict(num_iterations=1), False),
    "paper's alternation": (dict(num_iterations=ROUTED), False),
    "alternation, no reroute": (dict(num_iterations=ROUTED, reroute=False),
                                False),
    "MH, stop-gradient c": (dict(num_iterations=ROUTED, mh=True), False),
    "MH + through routing": (
        dict(num_iterations=ROUTED, mh=True, through_routing=True), False),
    "PCD (MH chains)": (dict(num_iterations=ROUTED, mh=True), True),
}


def routing(mode: str) -> capsjax.Routing:
  return capsjax.Routing(MODES[mode][0]["num_iterations"])


def kernel(mode: str) -> capsjax.Kernel:
  """The negative phase's kernel of `mode`."""
  options = MODES[mode][0]
  if options.get("mh", False):
    return capsjax.mh(routing(mode))
  return capsjax.gibbs(routing(mode), reroute=options.get("reroute", True))


def patterns() -> jax.Array:
  """The 6 distinct 2x2 bars-and-stripes images, rows as capsules: (6, 2, 2)."""
  images = set()
  for bits in itertools.product((0.0, 1.0), repeat=2):
    bars = np.repeat(np.array(bits)[:, None], 2, axis=1)  # each row constant
    images |= {tuple(bars.ravel()), tuple(bars.T.ravel())}
  return jnp.asarray(sorted(images), jnp.float32).reshape(-1, 2, 2)


def init_params(key, init_scale: float):
  """W ~ N(0, init_scale^2); zero biases (every pixel's marginal is 1/2)."""
  w = init_scale * jax.random.normal(key, (2, NUM_HIDDEN, HIDDEN_DIM, 2))
  return {"W": w, "a": jnp.zeros((2, 2)),
          "b": jnp.zeros((NUM_HIDDEN, HIDDEN_DIM))}


@functools.partial(jax.jit, static_argnames="routing")
def log_likelihood(params, routing: capsjax.Routing) -> jax.Array:
  """Exact mean log p(v) over the 6 patterns, nats per pattern."""
  log_z = capsjax.exact_log_z(params, routing)
  return jnp.mean(capsjax.log_prob(params, patterns(), routing, log_z))


@functools.partial(jax.jit, static_argnames=("mode", "steps"))
def train(key, learning_rate=0.1, init_scale=0.5, *, mode: str, steps: int):
  """Trains one model on the 6 patterns; returns (initial, final) params.

  Only `mode` and `steps` are static; `run_mode` maps it over seeds.
  """
  options, persistent = MODES[mode]
  chains = kernel(mode)
  data = patterns()
  key_init, key_train = jax.random.split(key)
  params = init_params(key_init, init_scale)
  optimizer = optax.sgd(learning_rate)
  state = capsjax.init_train_state(
      params, optimizer,
      chain=chains.init(params, data) if persistent else None)
  step = functools.partial(
      capsjax.train_step, optimizer=optimizer, kernel=chains, k=1,
      through_routing=options.get("through_routing", False))
  # train_step folds the step count into the key: one key serves every step.
  state, _ = jax.lax.scan(lambda s, _: (step(key_train, s, data)[0], None),
                          state, length=steps)
  return params, state.params


def run_mode(mode: str, keys, *, steps: int, learning_rate: float = 0.1,
             init_scale: float = 0.5):
  """One model per key; returns (final params, LL at start, LL at end)."""
  # lax.map, not vmap: the seeds' results are the same, compilation faster.
  initial, final = jax.lax.map(
      lambda k: train(k, learning_rate, init_scale, mode=mode, steps=steps),
      keys)
  evaluate = jax.vmap(functools.partial(log_likelihood,
                                        routing=routing(mode)))
  return final, evaluate(initial), evaluate(final)


def seed_keys(seed: int, num_seeds: int):
  return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(
      jnp.arange(num_seeds))
