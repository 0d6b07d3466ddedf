"""Bad input gives a ValueError at trace time that names the argument."""

import jax
import jax.numpy as jnp
import pytest

import capsjax

NV, DV, NH, DH = 3, 4, 2, 5


def _params():
  return {"W": jnp.zeros((NV, NH, DH, DV)), "a": jnp.zeros((NV, DV)),
          "b": jnp.zeros((NH, DH))}


V = jnp.zeros((6, NV, DV))
H = jnp.zeros((6, NH, DH))
C = jnp.full((6, NV, NH), 0.5)


@pytest.mark.parametrize("call, match", [
    (lambda p: capsjax.predictions(p, jnp.zeros((6, NV + 1, DV))),
     r"v must have shape \(\.\.\., 3, 4\).*got \(6, 4, 4\)"),
    (lambda p: capsjax.predictions(p, jnp.zeros((6, NV, DV + 1))),
     r"v must have shape"),
    (lambda p: capsjax.free_energy(p, V, jnp.zeros((6, NV, NH + 1))),
     r"c must have shape \(\.\.\., 3, 2\)"),
    (lambda p: capsjax.energy(p, V, jnp.zeros((6, NH, DH + 1)), C),
     r"h must have shape \(\.\.\., 2, 5\)"),
    (lambda p: capsjax.visible_probs(p, jnp.zeros((6, NH + 1, DH)), C),
     r"h must have shape"),
    (lambda p: capsjax.free_energy(p, jnp.zeros((5, NV, DV)), C),
     r"batch shapes do not broadcast: v \(5,\), c \(6,\)"),
    (lambda p: capsjax.predictions(p, jnp.zeros((6, NV, DV), jnp.int32)),
     r"v must be a floating-point array; got dtype int32"),
    (lambda p: capsjax.route(jnp.zeros((2, 3, 4, 5)), 0),
     r"num_iterations must be >= 1; got 0"),
    (lambda p: capsjax.route(jnp.zeros((2, 3, 4, 5)), 2.0),
     r"num_iterations must be a Python int"),
    (lambda p: capsjax.cd_gradient(p, jax.random.key(0), V, k=0),
     r"k must be a Python int >= 1; got 0"),
    (lambda p: capsjax.cd_gradient(p, jax.random.key(0), V, num_iterations=0),
     r"num_iterations must be >= 1"),
    (lambda p: capsjax.cd_gradient(p, jax.random.key(0),
                                   jnp.zeros((6, NV, DV + 2))),
     r"v must have shape \(\.\.\., 3, 4\)"),
    (lambda p: capsjax.cd_gradient(p, jax.random.key(0), V.astype(jnp.int8)),
     r"v must be a floating-point array"),
    (lambda p: capsjax.cd_gradient(p, jax.random.key(0), V, mh=True,
                                   mean_field_negative=True),
     r"mean_field_negative"),
    (lambda p: capsjax.free_energy(p, V, C, visible="poisson"),
     r"visible must be one of \('bernoulli', 'gaussian'\); got 'poisson'"),
    (lambda p: capsjax.free_energy(p | {"a": jnp.zeros((NV, DV + 1))}, V, C),
     r"params\['a'\] must have shape \(Nv, Dv\) = \(3, 4\)"),
    (lambda p: capsjax.free_energy(p | {"b": jnp.zeros((NH,))}, V, C),
     r"params\['b'\] must have shape \(Nh, Dh\) = \(2, 5\)"),
    (lambda p: capsjax.free_energy(p | {"W": jnp.zeros((NV, NH, DH))}, V, C),
     r"params\['W'\] must have shape \(Nv, Nh, Dh, Dv\)"),
    (lambda p: capsjax.free_energy({"W": p["W"]}, V, C),
     r"params must be a mapping with keys 'W', 'a', 'b'"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call(_params())


def test_errors_raise_at_trace_time_under_jit():
  f = jax.jit(lambda p, v: capsjax.predictions(p, v))
  with pytest.raises(ValueError, match="v must have shape"):
    f(_params(), jnp.zeros((2, NV + 1, DV)))


def test_persistent_chain_shape_is_checked():
  chain = capsjax.ChainState(jnp.zeros((6, NV, DV + 1)), C)
  with pytest.raises(ValueError, match=r"chain.v must have shape"):
    capsjax.cd_gradient(_params(), jax.random.key(0), V, chain=chain)
