"""Flax NNX modules that own the parameters and call the pure functions."""

from __future__ import annotations

from typing import Optional

from flax import nnx
import jax
import jax.numpy as jnp

from capsjax import cd
from capsjax import energies
from capsjax import routing as routing_lib
from capsjax import validation


class CapsulePoE(nnx.Module):
  """One capsule layer as a routing-weighted product of expert neurons.

  Holds `W` (Nv, Nh, Dh, Dv), `a` (Nv, Dv) and `b` (Nh, Dh) as `nnx.Param`s,
  and its `routing` (a `capsjax.Routing`) and `visible` unit type as static
  attributes; every method calls the pure functions of `capsjax` on
  `self.params()`. Initialization follows Hinton's practical guide
  (`capsjax.init_params`): `W ~ N(0, init_scale^2)`, hidden biases 0,
  visible biases from the data marginals when `data` (..., Nv, Dv) is
  given, else 0.

  Training is functional: take `params()`, run `capsjax.train_step` under
  `jit` with a kernel built from `routing` and `visible`, and write the
  result back with `set_params`.
  """

  def __init__(self, num_visible_capsules: int, visible_dim: int,
               num_hidden_capsules: int, hidden_dim: int, *,
               rngs: nnx.Rngs,
               routing: routing_lib.Routing = routing_lib.Routing(),
               visible: str = "bernoulli", init_scale: float = 0.01,
               data: Optional[jax.Array] = None,
               dtype=jnp.float32):
    self.routing = routing_lib.check_routing(routing)
    self.visible = validation.visible_type(visible)
    params = cd.init_params(rngs.params(), num_visible_capsules, visible_dim,
                            num_hidden_capsules, hidden_dim,
                            weight_std=init_scale, data=data, visible=visible,
                            dtype=dtype)
    self.W = nnx.Param(params["W"])
    self.a = nnx.Param(params["a"])
    self.b = nnx.Param(params["b"])

  def params(self) -> dict:
    """The pure params pytree {"W", "a", "b"} of the functional API."""
    return {"W": self.W[...], "a": self.a[...], "b": self.b[...]}

  def set_params(self, params) -> None:
    validation.param_shapes(params)
    for name in ("W", "a", "b"):
      getattr(self, name)[...] = params[name]

  def route(self, v) -> routing_lib.RoutingResult:
    return routing_lib.route_from_visible(self.params(), v, self.routing)

  def coefficients(self, v) -> jax.Array:
    return routing_lib.route_visible(self.params(), v, self.routing)

  def free_energy(self, v) -> jax.Array:
    """The routed model's `F(v; c(v))`."""
    return energies.routed_free_energy(self.params(), v, self.routing,
                                       visible=self.visible)

  def hidden_probs(self, v) -> jax.Array:
    return energies.hidden_probs(self.params(), v, self.coefficients(v))

  def reconstruct(self, v) -> jax.Array:
    """One deterministic up-down pass with the data's coefficients."""
    return energies.reconstruct(self.params(), v, self.coefficients(v),
                                visible=self.visible)

  def __call__(self, v) -> jax.Array:
    return self.hidden_probs(v)
