"""Trace-time argument checks shared by the public functions.

Shapes are static under `jit`, so every check here runs once per trace and
costs nothing at run time. Capsule axes must match exactly; only the leading
batch axes broadcast (numpy rules), so a wrong capsule count never silently
broadcasts.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

VISIBLE_TYPES = ("bernoulli", "gaussian")


def param_shapes(params) -> tuple[int, int, int, int]:
  """Checks the params pytree and returns (Nv, Nh, Dh, Dv)."""
  try:
    W, a, b = params["W"], params["a"], params["b"]
  except (KeyError, TypeError) as e:
    raise ValueError(
        "params must be a mapping with keys 'W', 'a', 'b'; got "
        f"{type(params).__name__}") from e
  if jnp.ndim(W) != 4:
    raise ValueError(
        f"params['W'] must have shape (Nv, Nh, Dh, Dv); got {jnp.shape(W)}")
  nv, nh, dh, dv = jnp.shape(W)
  if jnp.shape(a) != (nv, dv):
    raise ValueError(
        f"params['a'] must have shape (Nv, Dv) = {(nv, dv)} to match W "
        f"{jnp.shape(W)}; got {jnp.shape(a)}")
  if jnp.shape(b) != (nh, dh):
    raise ValueError(
        f"params['b'] must have shape (Nh, Dh) = {(nh, dh)} to match W "
        f"{jnp.shape(W)}; got {jnp.shape(b)}")
  return nv, nh, dh, dv


def check_floating(name: str, x) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a floating-point array; got dtype {dtype} "
        f"(convert with {name}.astype(jnp.float32))")


def check_trailing(name: str, x, expected: tuple[int, ...], what: str):
  """Checks that x ends in `expected` and returns its batch shape."""
  check_floating(name, x)
  shape = jnp.shape(x)
  n = len(expected)
  if len(shape) < n or tuple(shape[len(shape) - n:]) != tuple(expected):
    raise ValueError(
        f"{name} must have shape (..., {', '.join(map(str, expected))}) "
        f"{what}; got {shape}")
  return tuple(shape[:len(shape) - n])


def check_batch(**batch_shapes) -> tuple[int, ...]:
  """Checks that the named batch shapes broadcast; returns the result."""
  try:
    return tuple(np.broadcast_shapes(*batch_shapes.values()))
  except ValueError as e:
    desc = ", ".join(f"{k} {v}" for k, v in batch_shapes.items())
    raise ValueError(f"batch shapes do not broadcast: {desc}") from e


def visible(params, v, name: str = "v"):
  nv, _, _, dv = param_shapes(params)
  return check_trailing(name, v, (nv, dv), "= (..., Nv, Dv) of params['W']")


def hidden(params, h, name: str = "h"):
  _, nh, dh, _ = param_shapes(params)
  return check_trailing(name, h, (nh, dh), "= (..., Nh, Dh) of params['W']")


def coefficients(params, c, name: str = "c"):
  nv, nh, _, _ = param_shapes(params)
  return check_trailing(name, c, (nv, nh), "= (..., Nv, Nh) of params['W']")


def positive_int(name: str, k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"{name} must be a Python int >= 1; got {k!r}")
  return int(k)


def visible_type(visible_kind: str) -> str:
  if visible_kind not in VISIBLE_TYPES:
    raise ValueError(
        f"visible must be one of {VISIBLE_TYPES}; got {visible_kind!r}")
  return visible_kind
