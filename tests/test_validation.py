"""Bad input gives a ValueError at trace time that names the argument."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import capsjax
from capsjax import Routing

NV, DV, NH, DH = 3, 4, 2, 5


def _params():
  return {"W": jnp.zeros((NV, NH, DH, DV)), "a": jnp.zeros((NV, DV)),
          "b": jnp.zeros((NH, DH))}


V = jnp.zeros((6, NV, DV))
H = jnp.zeros((6, NH, DH))
C = jnp.full((6, NV, NH), 0.5)
GIBBS = capsjax.gibbs(Routing(3))
MH = capsjax.mh(Routing(3))


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
    (lambda p: Routing(0),
     r"Routing.num_iterations must be a Python int >= 1; got 0"),
    (lambda p: Routing(num_iterations=2.0),
     r"Routing.num_iterations must be a Python int >= 1; got 2.0"),
    (lambda p: Routing(num_iterations=True),
     r"Routing.num_iterations must be a Python int"),
    (lambda p: Routing(temperature=0),
     r"Routing.temperature must be a Python float > 0; got 0"),
    (lambda p: Routing(temperature=-2.0), r"Routing.temperature must be"),
    (lambda p: Routing(rule="x"),
     r"Routing.rule must be one of \('sabour', 'cosine', 'normalized'\); "
     r"got 'x'"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p, V, kernel=GIBBS,
                                   k=0),
     r"k must be a Python int >= 1; got 0"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p,
                                   jnp.zeros((6, NV, DV + 2)), kernel=GIBBS),
     r"v must have shape \(\.\.\., 3, 4\)"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p, V.astype(jnp.int8),
                                   kernel=GIBBS),
     r"v must be a floating-point array"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p, V, kernel=3),
     r"kernel must be a capsjax.gibbs\(\.\.\.\), capsjax.mh\(\.\.\.\).* "
     r"kernel; got int"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p, V, kernel=MH,
                                   mean_field_negative=True),
     r"mean_field_negative needs a Gibbs kernel"),
    (lambda p: capsjax.cd_gradient(jax.random.key(0), p, V, kernel=GIBBS,
                                   through_routing=True),
     r"through_routing=True needs a kernel that samples the routed model "
     r"exactly"),
    (lambda p: capsjax.cd_gradient(
        jax.random.key(0), p, V,
        kernel=capsjax.gibbs(Routing(2), reroute=False),
        through_routing=True),
     r"through_routing=True needs a kernel"),
    (lambda p: capsjax.gibbs(Routing(3), visible="poisson"),
     r"visible must be one of \('bernoulli', 'gaussian'\); got 'poisson'"),
    (lambda p: capsjax.mh(Routing(3), visible="poisson"),
     r"visible must be one of"),
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
    (lambda p: capsjax.effective_weights(capsjax.sgd(0.1), 0.0),
     r"scale must be a number > 0; got 0.0"),
    (lambda p: capsjax.init_params(jax.random.key(0), NV, DV, 0, DH),
     r"num_hidden_capsules must be a Python int >= 1; got 0"),
    (lambda p: capsjax.init_params(jax.random.key(0), NV, DV, NH, DH,
                                   data=jnp.zeros((5, NV, DV + 1))),
     r"data must have shape \(\.\.\., 3, 4\)"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call(_params())


# Every public entry point that takes routing options, called with the 0.1
# bare num_iterations in the Routing's place.
BARE_INT_CALLS = {
    "route": lambda p: capsjax.route(capsjax.predictions(p, V), 3),
    "route_visible": lambda p: capsjax.route_visible(p, V, 3),
    "route_from_visible": lambda p: capsjax.route_from_visible(p, V, 3),
    "routed_free_energy": lambda p: capsjax.routed_free_energy(p, V, 3),
    "exact_log_z": lambda p: capsjax.exact_log_z(p, 3),
    "log_prob": lambda p: capsjax.log_prob(p, V, 3, 0.0),
    "ais": lambda p: capsjax.ais(jax.random.key(0), p, 3, num_betas=3,
                                 num_runs=2),
    "tempered_log_density": lambda p: capsjax.tempered_log_density(
        p, V, 3, 0.5, jnp.zeros((NV, DV))),
    "tempered_mh_step": lambda p: capsjax.tempered_mh_step(
        jax.random.key(0), MH.init(p, V), p, 0.5, jnp.zeros((NV, DV)),
        routing=3),
    "reverse_ais": lambda p: capsjax.reverse_ais(jax.random.key(0), p, V, 3,
                                                 num_betas=3),
    "tempering": lambda p: capsjax.tempering(3, (0.5, 1.0)),
    "gibbs": lambda p: capsjax.gibbs(3),
    "mh": lambda p: capsjax.mh(3),
    "CapsulePoE": lambda p: capsjax.CapsulePoE(NV, DV, NH, DH,
                                               rngs=nnx.Rngs(0), routing=3),
}


@pytest.mark.parametrize("name", sorted(BARE_INT_CALLS))
def test_bare_int_routing_raises_one_line_error(name):
  with pytest.raises(ValueError) as err:
    BARE_INT_CALLS[name](_params())
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith("routing must be a capsjax.Routing; got 3")
  assert "capsjax.Routing(num_iterations=3)" in message


def test_other_non_routing_values_raise():
  for bad in (None, 3.0, np.int32(3), {"num_iterations": 3}):
    with pytest.raises(ValueError, match="routing must be a capsjax.Routing"):
      capsjax.route_visible(_params(), V, bad)
  # numpy integers get the same hint as Python ints.
  with pytest.raises(ValueError, match=r"capsjax.Routing\(num_iterations="):
    capsjax.gibbs(np.int64(2))


@pytest.mark.parametrize("call", [
    lambda p: capsjax.exact_log_z(p, Routing(3), visible="gaussian"),
    lambda p: capsjax.ais(jax.random.key(0), p, Routing(3), num_betas=3,
                          num_runs=2, visible="gaussian"),
    lambda p: capsjax.reverse_ais(jax.random.key(0), p, V, Routing(3),
                                  num_betas=3, visible="gaussian"),
], ids=["exact_log_z", "ais", "reverse_ais"])
def test_gaussian_partition_function_is_refused(call):
  with pytest.raises(ValueError,
                     match=r"supports Bernoulli visible units only; got "
                           r"visible='gaussian'"):
    call(_params())


def test_errors_raise_at_trace_time_under_jit():
  f = jax.jit(lambda p, v: capsjax.predictions(p, v))
  with pytest.raises(ValueError, match="v must have shape"):
    f(_params(), jnp.zeros((2, NV + 1, DV)))


def test_persistent_chain_shape_is_checked():
  chain = capsjax.ChainState(jnp.zeros((6, NV, DV + 1)), C)
  with pytest.raises(ValueError, match=r"chain.v must have shape"):
    capsjax.cd_gradient(jax.random.key(0), _params(), V, kernel=GIBBS,
                        chain=chain)
  with pytest.raises(ValueError, match=r"chain.v must have shape"):
    capsjax.init_train_state(_params(), capsjax.sgd(0.1), chain=chain)
