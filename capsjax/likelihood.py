"""Log-likelihood of the routed model (MODEL.md sections 4 and 7).

`p(v) = exp(-F(v; c(v))) / Z`. `exact_log_z` enumerates every visible state
(tiny Bernoulli layers only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from capsjax import energies
from capsjax import validation

MAX_ENUMERABLE_NEURONS = 24


def exact_log_z(params, num_iterations: int, *, chunk_size: int = 4096
                ) -> jax.Array:
  """`log Z = logsumexp_v -F(v; c(v))` over all 2^(Nv*Dv) binary states.

  With `num_iterations=1` this is the log partition function of the plain
  RBM whose weights are `W / Nh`. States are generated chunk by chunk, so
  memory stays at `chunk_size` states.
  """
  nv, _, _, dv = validation.param_shapes(params)
  n = nv * dv
  if n > MAX_ENUMERABLE_NEURONS:
    raise ValueError(
        f"exact_log_z enumerates 2^(Nv*Dv) states; Nv*Dv = {n} exceeds "
        f"{MAX_ENUMERABLE_NEURONS} (use AIS for larger layers)")
  num_states = 2 ** n
  chunk = min(chunk_size, num_states)
  num_chunks = -(-num_states // chunk)
  dtype = params["W"].dtype
  bits = jnp.arange(n, dtype=jnp.int32)

  def chunk_logsumexp(i):
    idx = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
    v = ((idx[:, None] >> bits) & 1).astype(dtype).reshape(chunk, nv, dv)
    neg_f = -energies.routed_free_energy(params, v, num_iterations)
    # The last chunk may run past the end: mask those states out.
    return jax.nn.logsumexp(jnp.where(idx < num_states, neg_f, -jnp.inf))

  return jax.nn.logsumexp(jax.lax.map(chunk_logsumexp, jnp.arange(num_chunks)))


def log_prob(params, v: jax.Array, num_iterations: int, log_z: jax.Array
             ) -> jax.Array:
  """`log p(v) = -F(v; c(v)) - log Z`, shape (...,), in nats."""
  return -energies.routed_free_energy(params, v, num_iterations) - log_z
