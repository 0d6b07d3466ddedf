"""Flax NNX modules that own the parameters and call the pure functions."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import energies
from capsjax import routing
from capsjax import validation


def visible_bias_from_data(data: jax.Array, visible: str = "bernoulli",
                           eps: float = 1e-3) -> jax.Array:
  """Hinton's practical guide, section 8: `a = log(p / (1 - p))` of the data
  marginals (Bernoulli), or the data mean (Gaussian). Shape (Nv, Dv)."""
  mean = jnp.mean(data, axis=tuple(range(data.ndim - 2)))
  if visible == "gaussian":
    return mean
  p = jnp.clip(mean, eps, 1.0 - eps)
  return jnp.log(p) - jnp.log1p(-p)


class CapsulePoE(nnx.Module):
  """One capsule layer as a routing-weighted product of expert neurons.

  Holds `W` (Nv, Nh, Dh, Dv), `a` (Nv, Dv) and `b` (Nh, Dh) as `nnx.Param`s
  and the layer's hyperparameters; every method calls the pure functions of
  `capsjax` on `self.params()`. Initialization follows Hinton's practical
  guide: `W ~ N(0, init_scale^2)`, hidden biases 0, visible biases from the
  data marginals when `data` (..., Nv, Dv) is given, else 0.

  Training is functional: take `params()`, run `capsjax.train_step` under
  `jit`, and write the result back with `set_params`.
  """

  def __init__(self, num_visible_capsules: int, visible_dim: int,
               num_hidden_capsules: int, hidden_dim: int, *,
               rngs: nnx.Rngs, num_iterations: int = 3,
               visible: str = "bernoulli", init_scale: float = 0.01,
               data: Optional[jax.Array] = None,
               dtype=jnp.float32):
    shape = (num_visible_capsules, num_hidden_capsules, hidden_dim,
             visible_dim)
    for name, n in zip(("num_visible_capsules", "num_hidden_capsules",
                        "hidden_dim", "visible_dim"), shape):
      validation.positive_int(name, n)
    self.num_iterations = validation.num_iterations(num_iterations)
    self.visible = validation.visible_type(visible)
    self.W = nnx.Param(init_scale * jax.random.normal(rngs.params(), shape,
                                                      dtype))
    if data is None:
      a = jnp.zeros((num_visible_capsules, visible_dim), dtype)
    else:
      validation.check_trailing("data", data,
                                (num_visible_capsules, visible_dim),
                                "= (..., Nv, Dv)")
      a = visible_bias_from_data(data, visible).astype(dtype)
    self.a = nnx.Param(a)
    self.b = nnx.Param(jnp.zeros((num_hidden_capsules, hidden_dim), dtype))

  def params(self) -> dict:
    """The pure params pytree {"W", "a", "b"} of the functional API."""
    return {"W": self.W[...], "a": self.a[...], "b": self.b[...]}

  def set_params(self, params) -> None:
    validation.param_shapes(params)
    for name in ("W", "a", "b"):
      getattr(self, name)[...] = params[name]

  def route(self, v) -> routing.RoutingResult:
    return routing.route(routing.predictions(self.params(), v),
                         self.num_iterations)

  def coefficients(self, v) -> jax.Array:
    return self.route(v).coefficients

  def free_energy(self, v) -> jax.Array:
    """The routed model's `F(v; c(v))`."""
    return energies.routed_free_energy(self.params(), v, self.num_iterations,
                                     visible=self.visible)

  def hidden_probs(self, v) -> jax.Array:
    return energies.hidden_probs(self.params(), v, self.coefficients(v))

  def reconstruct(self, v) -> jax.Array:
    """One deterministic up-down pass with the data's coefficients."""
    return energies.reconstruct(self.params(), v, self.coefficients(v),
                                visible=self.visible)

  def __call__(self, v) -> jax.Array:
    return self.hidden_probs(v)
