"""Log-likelihood of the routed model (docs/model.md sections 4 and 7).

`p(v) = exp(-F(v; c(v))) / Z`. `exact_log_z` enumerates every visible state
(tiny layers), or every hidden state of an unrouted layer; `ais` estimates
log Z by annealed importance sampling for any size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import energies
from capsjax import routing as routing_lib
from capsjax import sampling
from capsjax import validation

MAX_ENUMERABLE_NEURONS = 24


def _bernoulli_only(fn: str, visible: str) -> None:
  if validation.visible_type(visible) != "bernoulli":
    raise ValueError(
        f"{fn} supports Bernoulli visible units only; got visible={visible!r} "
        "(a Gaussian layer's partition function needs another base model)")


def _enumerate(n: int, chunk_size: int, dtype, neg_energy):
  """`logsumexp` of `neg_energy(states)` over all 2^n binary states (n,),
  generated `chunk_size` at a time under `lax.map`."""
  num_states = 2 ** n
  chunk = min(chunk_size, num_states)
  num_chunks = -(-num_states // chunk)
  bits = jnp.arange(n, dtype=jnp.int32)

  def chunk_logsumexp(i):
    idx = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
    states = ((idx[:, None] >> bits) & 1).astype(dtype)
    # The last chunk may run past the end: mask those states out.
    return jax.nn.logsumexp(jnp.where(idx < num_states, neg_energy(states),
                                      -jnp.inf))

  return jax.nn.logsumexp(jax.lax.map(chunk_logsumexp, jnp.arange(num_chunks)))


def exact_log_z(params, routing: routing_lib.Routing, *,
                visible: str = "bernoulli", over: str = "auto",
                chunk_size: int = 4096) -> jax.Array:
  """`log Z` of the routed model (docs/model.md section 4) by enumeration.

  `over="visible"`: `logsumexp_v -F(v; c(v))` over all 2^(Nv*Dv) binary
  visible states; any routing, Bernoulli units.
  `over="hidden"`: `logsumexp_h log Z_h(c)` over all 2^(Nh*Dh) hidden
  states, where `log Z_h(c) = log sum_v exp(-E(v, h; c))` is closed-form
  (`energies.log_partition_given_hidden`, plus `Nv Dv log(2 pi) / 2` for
  Gaussian units, whose Z is then an integral over v). Only for the
  unrouted layer: with routing, c depends on v and the sum over v given h
  has no closed form. This is how an MNIST-sized unrouted layer (784
  visible, up to 24 hidden neurons) gets an exact Z.
  `over="auto"`: "visible" for a routed layer; for an unrouted one the
  smaller of the two (always "hidden" for Gaussian units).

  With one routing iteration this is the log partition function of the
  plain RBM whose weights are `W / Nh`. States are generated `chunk_size`
  at a time, so memory stays at `chunk_size` states.
  """
  routing_lib.check_routing(routing)
  visible = validation.visible_type(visible)
  nv, nh, dh, dv = validation.param_shapes(params)
  if over == "auto":
    over = ("visible" if routing.routed else
            "hidden" if visible == "gaussian" or nh * dh < nv * dv else
            "visible")
  if over not in ("visible", "hidden"):
    raise ValueError(
        f"over must be 'auto', 'visible' or 'hidden'; got {over!r}")
  n = nv * dv if over == "visible" else nh * dh
  if n > MAX_ENUMERABLE_NEURONS:
    raise ValueError(
        f"exact_log_z(over={over!r}) enumerates 2^{n} states, more than "
        f"2^{MAX_ENUMERABLE_NEURONS} (use AIS for larger layers)")
  dtype = params["W"].dtype
  if over == "visible":
    _bernoulli_only("exact_log_z(over='visible')", visible)
    return _enumerate(
        n, chunk_size, dtype, lambda v: -energies.routed_free_energy(
            params, v.reshape(-1, nv, dv), routing))
  if routing.routed:
    raise ValueError(
        "exact_log_z(over='hidden') needs coefficients that do not depend "
        "on v: unrouted layers only (Routing(num_iterations=1)); got "
        f"{routing}")
  c = sampling.shared_uniform(params, dtype)
  constant = (0.5 * nv * dv * np.log(2 * np.pi) if visible == "gaussian"
              else 0.0)
  return constant + _enumerate(
      n, chunk_size, dtype, lambda h: energies.log_partition_given_hidden(
          params, h.reshape(-1, nh, dh), c, visible=visible))


def log_prob(params, v: jax.Array, routing: routing_lib.Routing,
             log_z: jax.Array, *, visible: str = "bernoulli") -> jax.Array:
  """`log p(v) = -F(v; c(v)) - log Z`, shape (...,), in nats (a density in
  v for Gaussian units, with the `log Z` of the same convention)."""
  return -energies.routed_free_energy(params, v, routing,
                                      visible=visible) - log_z


# --------------------------------------------------------------------------
# Annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008).
#
# The annealing path runs over the joint (v, h), as in docs/model.md section 7:
#
#   p_beta(v, h) ∝ exp((1 - beta) a_A.v - beta E(v, h; c(v)))
#
# with a_A the base model's visible biases. Summing out h in closed form
# (Salakhutdinov & Murray 2008, section 4.1) gives the unnormalized
# log-density of the visible marginal that the importance weights use:
#
#   f_beta(v) = ((1 - beta) a_A + beta a).v
#               + sum_jk softplus(beta (b_jk + s_jk(v; c(v))))
#
# f_1(v) = -F(v; c(v)), so Z_1 is the Z of docs/model.md section 4, and
# f_0(v) = a_A.v + Nh Dh log 2 (at beta = 0 each hidden neuron is a fair
# coin), so log Z_A = sum softplus(a_A) + Nh Dh log 2.
#
# Both f_beta and the transitions are those of the routed model with the
# "tempered parameters" W_beta = beta W, a_beta = (1 - beta) a_A + beta a,
# b_beta = beta b, except that the coefficients c(v) are always routed with
# the untempered W (tempering W would change the routing). The code reuses
# the c-fixed functions of `energies` and `sampling.mh_log_ratio` with those
# parameters and routes with the original ones.


class AISResult(NamedTuple):
  log_z: jax.Array            # (): log Z_A + log mean_runs exp(log_weights)
  log_z_std: jax.Array        # (): delta-method standard error of log_z
  log_weights: jax.Array      # (num_runs,): log w of each run
  ess: jax.Array              # (): (sum w)^2 / sum w^2, in [1, num_runs]
  acceptance_rate: jax.Array  # (): mean MH acceptance over betas and runs
  log_z_base: jax.Array       # (): log Z_A of the base model
  samples: jax.Array          # (num_runs, Nv, Dv): final states; with the
                              # weights, an importance sample of p(v)


def base_rate_bias(data: jax.Array, eps: float = 1e-3) -> jax.Array:
  """Base-model biases `logit(clip(mean(data), eps, 1 - eps))`, (Nv, Dv).

  The independent-Bernoulli model with the data's marginals (docs/model.md
  section 7); the clip keeps the logits finite for pixels that are always
  off or on. Averages over every leading axis of `data` (..., Nv, Dv).
  """
  data = jnp.asarray(data)
  validation.check_floating("data", data)
  if data.ndim < 2:
    raise ValueError(
        f"data must have shape (..., Nv, Dv); got {jnp.shape(data)}")
  mean = jnp.mean(data, axis=tuple(range(data.ndim - 2)))
  return jax.scipy.special.logit(jnp.clip(mean, eps, 1.0 - eps))


# Knots of Salakhutdinov & Murray's schedule (500 betas in [0, 0.5), 4000 in
# [0.5, 0.9), 10000 in [0.9, 1]): fraction of the schedule -> beta.
_SM_FRACTIONS = (0.0, 500 / 14500, 4500 / 14500, 1.0)
_SM_BETAS = (0.0, 0.5, 0.9, 1.0)


def beta_schedule(num_betas: int, kind: str = "piecewise") -> np.ndarray:
  """An increasing schedule of `num_betas` inverse temperatures, 0 to 1.

  `kind="piecewise"`: Salakhutdinov & Murray's (2008) piecewise-linear
  schedule scaled to `num_betas` (for 14,500 it puts 500 in [0, 0.5), 4000
  in [0.5, 0.9) and 10,000 in [0.9, 1], up to rounding at the knots): dense
  near beta = 1, where an RBM's distribution changes fastest.
  `kind="linear"`: evenly spaced. A numpy float64 array (static; no
  compilation), first element exactly 0 and last exactly 1.
  """
  num_betas = validation.positive_int("num_betas", num_betas)
  if num_betas < 2:
    raise ValueError(
        f"num_betas must be >= 2 (beta = 0 and 1); got {num_betas}")
  t = np.linspace(0.0, 1.0, num_betas)
  if kind == "linear":
    return t
  if kind == "piecewise":
    return np.interp(t, _SM_FRACTIONS, _SM_BETAS)
  raise ValueError(f"kind must be 'piecewise' or 'linear'; got {kind!r}")


def _tempered_params(params, beta, base_bias):
  """The c-fixed RBM of p_beta: W_beta, a_beta, b_beta (see above)."""
  return {"W": beta * params["W"],
          "a": (1.0 - beta) * base_bias + beta * params["a"],
          "b": beta * params["b"]}


def tempered_log_density(params, v: jax.Array, routing: routing_lib.Routing,
                         beta, base_bias: jax.Array, *,
                         visible: str = "bernoulli") -> jax.Array:
  """`f_beta(v) = log sum_h exp((1 - beta) a_A.v - beta E(v, h; c(v)))`.

  Shape (...,). `f_1 = -F(v; c(v))` and `f_0 = a_A.v + Nh Dh log 2`.
  """
  _bernoulli_only("tempered_log_density", visible)
  c = routing_lib.route_visible(params, v, routing)
  return -energies.free_energy(_tempered_params(params, beta, base_bias), v, c)


def _log_weight_increment(params, state, routing, beta_prev, beta,
                          base_bias):
  """`f_beta(v) - f_beta_prev(v)` at the chain state, with s(v; c) once (the
  state's, when it carries it)."""
  c = sampling.conditional_coefficients(params, state, routing)
  s = params["b"] + sampling.state_input(params, state, c)
  a_diff = (beta - beta_prev) * (params["a"] - base_bias)
  experts = jax.nn.softplus(beta * s) - jax.nn.softplus(beta_prev * s)
  return (jnp.sum(a_diff * state.v, axis=(-2, -1))
          + jnp.sum(experts, axis=(-2, -1)))


def tempered_mh_step(key, state: sampling.ChainState, params, beta,
                     base_bias: jax.Array, *, routing: routing_lib.Routing,
                     visible: str = "bernoulli", block_fraction: float = 1.0
                     ) -> tuple[sampling.ChainState, sampling.ChainInfo]:
  """One transition that leaves `p_beta(v, h)` (hence `p_beta(v)`) invariant.

  h ~ p_beta(h | v) = sigmoid(beta (b + s(v; c))), exact; then the v-step
  of docs/model.md section 6 for the tempered joint: propose
  v' ~ sigmoid((1 - beta) a_A + beta (a + x(h; c))) with c = c(v), route
  c' = c(v') with the untempered W, and accept with

    log r = beta h.s(v + v'; c' - c) + log Z_h^beta(c) - log Z_h^beta(c'),
    log Z_h^beta(c) = beta b.h
                      + sum_il softplus((1-beta) a_A + beta (a + x(h; c))).

  That is `sampling.mh_log_ratio` of the tempered parameters, and at
  beta = 1 it is `mh_log_ratio(params, ...)` itself. With one routing
  iteration c' = c and every proposal is accepted (an exact Gibbs step).
  `state.coefficients` must be c(state.v). `block_fraction` < 1 proposes a
  random subset of the lower capsules, as `capsjax.mh`'s does.
  """
  routing_lib.check_routing(routing)
  _bernoulli_only("tempered_mh_step", visible)
  block_fraction = sampling.check_block_fraction(block_fraction)
  tempered = _tempered_params(params, beta, base_bias)
  if routing.routed:
    return sampling.mh_transition(key, state, tempered, routing,
                                  routing_params=params, input_scale=beta,
                                  block_fraction=block_fraction)
  # c' = c: every proposal is accepted (a Gibbs step of the tempered RBM).
  key_h, key_v, _ = jax.random.split(key, 3)
  c = sampling.conditional_coefficients(params, state, routing)
  h, _ = energies.sample_hidden(key_h, tempered, state.v, c)
  proposal, mean = energies.sample_visible(key_v, tempered, h, c)
  return (sampling.moved_keeping_coefficients(params, state, proposal, c),
          sampling.gibbs_info(h, mean, proposal))


def _log_mean_exp_stats(log_w):
  """log mean w, the delta-method s.e. of it, and the ESS, all in log space."""
  n = log_w.shape[0]
  log_sum = jax.nn.logsumexp(log_w)
  log_mean = log_sum - jnp.log(n)
  # ESS = (sum w)^2 / sum w^2.
  ess = jnp.exp(2.0 * log_sum - jax.nn.logsumexp(2.0 * log_w))
  # Var(log mean w) ~ Var(w) / (n mean(w)^2) (delta method). Weights are
  # rescaled by their maximum first, so nothing overflows.
  w = jnp.exp(log_w - jnp.max(log_w))
  rel_var = jnp.var(w, ddof=1) / jnp.square(jnp.mean(w)) if n > 1 else jnp.inf
  return log_mean, jnp.sqrt(rel_var / n), ess


def _check_concrete_betas(betas):
  """Checks the endpoints and order of `betas` when they are known now."""
  try:
    b = np.asarray(betas)
  except jax.errors.TracerArrayConversionError:
    return  # traced under jit: the caller's responsibility
  if b[0] != 0.0 or b[-1] != 1.0 or np.any(np.diff(b) < 0):
    raise ValueError("betas must increase from exactly 0 to exactly 1; got "
                     f"first {b[0]}, last {b[-1]}")


# An AIS estimate counts as degenerate (not to be quoted) when the effective
# sample size of its importance weights falls below this fraction of the
# runs, or below MIN_ESS for few runs (a single run then carries most of the
# weight). BUILD_NOTES.md gives the reasoning.
MIN_ESS_FRACTION = 0.1
MIN_ESS = 2.0


def ess_threshold(num_runs: int) -> float:
  """The ESS below which an AIS estimate is flagged degenerate."""
  return max(MIN_ESS_FRACTION * num_runs, MIN_ESS)


def ais_upper_bound(log_likelihoods, *, failure_probability: float = 0.05):
  """An upper bound on the true (mean) log-likelihood from `n` AIS-based
  estimates of it, holding with probability >= 1 - failure_probability
  however degenerate their importance weights:
  `min(log_likelihoods) + log(n / failure_probability)`.

  AIS's estimate of Z is unbiased, so by Markov's inequality
  P(log Z_est > log Z + t) <= exp(-t); a log-likelihood estimate
  `-F(v) - log Z_est` exceeds the truth by more than t with at most that
  probability, and the minimum of n independent estimates by a union bound
  with n times it. A jax array gives a (traceable) jax scalar, anything
  else a float computed in float64.
  """
  if isinstance(log_likelihoods, jax.Array):
    return (jnp.min(log_likelihoods)
            + np.log(log_likelihoods.size / failure_probability))
  x = np.asarray(log_likelihoods, np.float64)
  if x.size == 0:
    raise ValueError("ais_upper_bound needs at least one estimate")
  return float(x.min() + np.log(x.size / failure_probability))


def pseudo_log_likelihood(key, params, v: jax.Array,
                          routing: routing_lib.Routing) -> jax.Array:
  """A stochastic pseudo-log-likelihood of each example of `v` (N, Nv, Dv)
  under the routed model, (N,): with one neuron d drawn uniformly per
  example, `D * log sigmoid(F~(v with d flipped) - F~(v))` (D = Nv Dv), an
  unbiased estimate of `sum_d log p(v_d | v_-d)`."""
  nv, dv = v.shape[-2:]
  d = nv * dv
  flip = jax.nn.one_hot(jax.random.randint(key, v.shape[:1], 0, d),
                        d).reshape(v.shape)
  flipped = v + flip * (1.0 - 2.0 * v)
  f = energies.routed_free_energy(params, v, routing)
  return d * jax.nn.log_sigmoid(
      energies.routed_free_energy(params, flipped, routing) - f)


def _annealing_path(params, num_betas, base_bias, betas):
  """Checked `base_bias` (Nv, Dv) and `betas` (num_betas,), in W's dtype."""
  num_betas = validation.positive_int("num_betas", num_betas)
  nv, _, _, dv = validation.param_shapes(params)
  validation.check_floating("params['W']", params["W"])
  dtype = jnp.result_type(params["W"])
  if num_betas < 2:
    raise ValueError(
        f"num_betas must be >= 2 (beta = 0 and 1); got {num_betas}")
  if base_bias is None:
    base_bias = jnp.zeros((nv, dv), dtype)
  elif jnp.shape(base_bias) != (nv, dv):
    raise ValueError(f"base_bias must have shape (Nv, Dv) = {(nv, dv)}; "
                     f"got {jnp.shape(base_bias)}")
  if betas is None:
    betas = beta_schedule(num_betas)
  elif jnp.shape(betas) != (num_betas,):
    raise ValueError(f"betas must have shape (num_betas,) = ({num_betas},); "
                     f"got {jnp.shape(betas)}")
  else:
    _check_concrete_betas(betas)
  return jnp.asarray(base_bias, dtype), jnp.asarray(betas, dtype)


def _log_z_base(base_bias, num_hidden_neurons):
  """`log Z_A = sum softplus(a_A) + Nh Dh log 2` (module comment)."""
  return (jnp.sum(jax.nn.softplus(base_bias))
          + num_hidden_neurons * jnp.log(jnp.asarray(2.0, base_bias.dtype)))


def ais(key, params, routing: routing_lib.Routing, *, num_betas: int,
        num_runs: int,
        base_bias: Optional[jax.Array] = None,
        betas: Optional[jax.Array] = None,
        visible: str = "bernoulli", block_fraction: float = 1.0) -> AISResult:
  """Estimates log Z of the routed model (docs/model.md sections 4, 7) by
  AIS.

  Runs `num_runs` independent annealing chains from the base model (the
  independent Bernoulli units with biases `base_bias`, default 0: uniform)
  to the routed model along `p_beta(v, h)` (module comment above). At each
  intermediate beta the weights gain `f_beta(v) - f_beta_prev(v)` and the
  chain takes one `tempered_mh_step`. The whole run is one `lax.scan` over
  the betas on a batch of chains. Jit with `routing`, `num_betas`,
  `num_runs` and `visible` static; `betas` and `base_bias` may be traced.

  Args:
    key: a `jax.random` key.
    params: {"W", "a", "b"} of a Bernoulli layer.
    routing: the model's `Routing` (one iteration: the unrouted model).
    num_betas: length of the schedule, >= 2 (the literature uses 14,500).
    num_runs: independent runs (the literature uses 100).
    base_bias: (Nv, Dv) base-model biases, e.g. `base_rate_bias(data)`.
    betas: (num_betas,) increasing from exactly 0 to exactly 1; default
      `beta_schedule(num_betas)`.
    visible: only "bernoulli" is supported.
    block_fraction: the MH transitions' proposal block (`capsjax.mh`);
      static.

  Returns:
    An `AISResult`. `log_z_std` is the delta-method standard error
    `std(w) / (sqrt(num_runs) mean(w))` of `log_z`; like any estimate from
    the weights themselves it understates the error when the weights are
    degenerate (small `ess`), and AIS's log-estimate is biased low on
    average (Jensen), by about `log_z_std^2 / 2` for well-behaved weights.
  """
  routing_lib.check_routing(routing)
  _bernoulli_only("ais", visible)
  num_runs = validation.positive_int("num_runs", num_runs)
  nv, nh, dh, dv = validation.param_shapes(params)
  dtype = jnp.result_type(params["W"])
  base_bias, betas = _annealing_path(params, num_betas, base_bias, betas)

  key_init, key_run = jax.random.split(key)
  v0 = jax.random.bernoulli(key_init, jax.nn.sigmoid(base_bias),
                            (num_runs, nv, dv)).astype(dtype)
  state = sampling.chain_at(params, v0, routing)
  log_z_base = _log_z_base(base_bias, nh * dh)

  def body(carry, xs):
    state, log_w = carry
    key, beta_prev, beta = xs
    log_w = log_w + _log_weight_increment(params, state, routing, beta_prev,
                                          beta, base_bias)
    state, info = tempered_mh_step(key, state, params, beta, base_bias,
                                   routing=routing,
                                   block_fraction=block_fraction)
    return (state, log_w), jnp.mean(info.acceptance_rate)

  # Transitions at the intermediate betas only; the last increment (to
  # beta = 1) needs no transition after it.
  keys = jax.random.split(key_run, num_betas - 2)
  log_w = jnp.zeros((num_runs,), dtype)
  (state, log_w), rates = jax.lax.scan(
      body, (state, log_w), (keys, betas[:-2], betas[1:-1]))
  log_w = log_w + _log_weight_increment(params, state, routing, betas[-2],
                                        betas[-1], base_bias)

  log_mean_w, log_z_std, ess = _log_mean_exp_stats(log_w)
  # No transitions (num_betas == 2): no acceptance to report.
  acceptance = jnp.mean(rates) if num_betas > 2 else jnp.asarray(jnp.nan, dtype)
  return AISResult(log_z=log_z_base + log_mean_w, log_z_std=log_z_std,
                   log_weights=log_w, ess=ess, acceptance_rate=acceptance,
                   log_z_base=log_z_base, samples=state.v)


# --------------------------------------------------------------------------
# Reverse AIS (Burda, Grosse & Salakhutdinov 2015, RAISE).
#
# Forward AIS, read as a generative process, is itself a model: v_0 from the
# base model, then v_k ~ T_k(. | v_{k-1}) for k = 1 .. K, with T_k the
# transition at beta_k (beta_K = 1). Its output's density q(v) is what
# RAISE estimates, without bias: since each T_k is reversible with respect
# to p_k (a Gibbs or MH step on v, with h drawn and discarded),
#
#   q(v) = E[ p_0(v_0) prod_{k=1..K} f_k(v_k) / f_k(v_{k-1}) ],
#
# the expectation over the reverse chain v_K = v, v_{k-1} ~ T_k(. | v_k).
# Rearranged with the forward increments inc_j(v) = f_{j+1}(v) - f_j(v):
#
#   log q(v) ~ -F(v; c(v)) - log Z_A - sum_{j=0..K-1} inc_j(v_j).
#
# q approaches p as the annealing gets slower, and log of the unbiased
# estimate is biased low (Jensen): a conservative estimate of the test
# log-likelihood beside forward AIS's (which overestimates it when log Z is
# underestimated). The paper anneals over (v, h) from p(h | v); summing h
# out, as here, is the same estimator with the h-draws integrated.


class ReverseAISResult(NamedTuple):
  log_prob: jax.Array         # (...,): log q-hat(v) per example, in nats
  acceptance_rate: jax.Array  # (): mean MH acceptance over betas and chains


def reverse_ais(key, params, v: jax.Array, routing: routing_lib.Routing, *,
                num_betas: int, base_bias: Optional[jax.Array] = None,
                betas: Optional[jax.Array] = None,
                visible: str = "bernoulli", block_fraction: float = 1.0
                ) -> ReverseAISResult:
  """RAISE: a conservative estimate of log p(v) for each example of `v`.

  One annealing chain per example (repeat `v` for more), started at the
  example and annealed back to the base model along the forward AIS path
  (same `base_bias` and `betas` conventions as `ais`), with the same
  exact transitions (`tempered_mh_step`, MH for a routed layer). The
  estimate is unbiased for the density of forward AIS's annealing model
  (module comment), so its mean over a test set is a stochastic lower
  bound on that model's test log-likelihood, which approaches the routed
  model's as `num_betas` grows. Jit with `routing`, `num_betas` and
  `visible` static.

  Args:
    key: a `jax.random` key.
    params: {"W", "a", "b"} of a Bernoulli layer.
    v: test examples (..., Nv, Dv), binary.
    routing: the model's `Routing`.
    num_betas: length of the schedule, >= 2.
    base_bias: (Nv, Dv) base-model biases, e.g. `base_rate_bias(data)`.
    betas: (num_betas,) increasing from exactly 0 to exactly 1; default
      `beta_schedule(num_betas)`.
    visible: only "bernoulli" is supported.
    block_fraction: the MH transitions' proposal block (`capsjax.mh`);
      static.
  """
  routing_lib.check_routing(routing)
  _bernoulli_only("reverse_ais", visible)
  batch_shape = validation.visible(params, v)
  _, nh, dh, _ = validation.param_shapes(params)
  base_bias, betas = _annealing_path(params, num_betas, base_bias, betas)
  v = v.astype(base_bias.dtype)
  state = sampling.chain_at(params, v, routing)
  neg_f = -energies.free_energy(params, v, state.coefficients)

  def body(carry, xs):
    state, inc = carry
    key, beta_lo, beta_hi = xs
    state, info = tempered_mh_step(key, state, params, beta_hi, base_bias,
                                   routing=routing,
                                   block_fraction=block_fraction)
    inc = inc + _log_weight_increment(params, state, routing, beta_lo,
                                      beta_hi, base_bias)
    return (state, inc), jnp.mean(info.acceptance_rate)

  # k = K .. 1: the transition at beta_k, then inc_{k-1} at the new state.
  keys = jax.random.split(key, num_betas - 1)
  inc = jnp.zeros(batch_shape, base_bias.dtype)
  (_, inc), rates = jax.lax.scan(body, (state, inc),
                                 (keys, betas[-2::-1], betas[:0:-1]))
  return ReverseAISResult(
      log_prob=neg_f - _log_z_base(base_bias, nh * dh) - inc,
      acceptance_rate=jnp.mean(rates))
