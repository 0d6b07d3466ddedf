"""What training watches besides the loss: cheap monitors on fixed train
and test subsets (`make_evaluate`), model samples (`make_sampler`; for
experiments/sample.py also annealed ones, `anneal_sampler`, and `draw`) and
the figure of samples and reconstructions written every sample_every_steps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import capsjax
from experiments.runner import factories
from experiments.runner import images
from experiments.runner import visible


def make_evaluate(config):
  """Cheap monitors on fixed binarized train and test subsets; for a routed
  layer also whether routing parses the test digits (the parse fraction,
  and with `test_labels` the class information; `capsjax.routing_parse`).

  With `config.monitor_ais_betas` > 0 also a likelihood proxy: AIS (betas x
  `monitor_ais_runs`, data-marginal base from `train_v`) gives log Z, its
  ESS and the MH acceptance of the routed model's exact chains; the test
  log-likelihood `-mean F~(test) - log Z` is NaN when the weights are
  degenerate (ESS below `capsjax.ess_threshold`); its 95% upper bound
  (experiments/ais_reliability.py) is reported in any case.
  """
  routing = factories.make_routing(config)
  num_betas, num_runs = config.monitor_ais_betas, config.monitor_ais_runs

  @jax.jit
  def evaluate(params, train_v, test_v, key, test_labels=None):
    def routed_f(v):
      return capsjax.routed_free_energy(params, v, routing)
    routed = capsjax.route(capsjax.predictions(params, test_v), routing)
    c = routed.coefficients
    entropy = capsjax.routing_entropy(c)
    # sum_j c_ij |W_ij| (Frobenius norms of the blocks), mean over i and the
    # examples; uniform routing gives mean_ij |W_ij|, so the ratio says how
    # much routing concentrates the effective weights.
    block_norms = jnp.sqrt(jnp.sum(jnp.square(params["W"]), axis=(-2, -1)))
    effective_norm = jnp.mean(jnp.sum(c * block_norms, axis=-1))
    recon = capsjax.reconstruct(params, test_v, c)
    f_test = routed_f(test_v)
    # One random neuron per example (capsjax.pseudo_log_likelihood).
    pll = capsjax.pseudo_log_likelihood(key, params, test_v, routing)
    monitors = {}
    if routing.routed:
      # Whether routing parses the digits or is a fixed partition.
      parse = capsjax.routing_parse(c, test_v, test_labels)
      monitors = {"test_routing_parse_fraction": parse.parse_fraction,
                  "test_routing_class_information": parse.class_information}
    if num_betas:
      ais = capsjax.ais(jax.random.fold_in(key, 1), params, routing,
                        num_betas=num_betas, num_runs=num_runs,
                        base_bias=capsjax.base_rate_bias(train_v))
      reliable = ais.ess >= capsjax.ess_threshold(num_runs)
      monitors |= {
          "monitor_ais_log_z": ais.log_z,
          "monitor_ais_log_z_std": ais.log_z_std,
          "monitor_ais_ess": ais.ess,
          "monitor_ais_acceptance": ais.acceptance_rate,
          "monitor_test_log_likelihood": jnp.where(
              reliable, -jnp.mean(f_test) - ais.log_z, jnp.nan),
          # Holds with probability >= 95% even for degenerate weights.
          "monitor_test_log_likelihood_upper_95": capsjax.ais_upper_bound(
              -jnp.mean(f_test) - ais.log_z),
      }
    return monitors | {
        "test_reconstruction_error": jnp.mean(jnp.square(test_v - recon)),
        "free_energy_gap_test_minus_train": (
            jnp.mean(f_test) - jnp.mean(routed_f(train_v))),
        "test_pseudo_log_likelihood": jnp.mean(pll),
        "test_routing_entropy": jnp.mean(entropy),
        "test_routing_entropy_std": jnp.std(entropy),
        # The spread of the final agreement logits over upper capsules:
        # routing hardens as it grows (Sabour's rule: with the votes'
        # norms; the scale-free rules keep each logit within r - 1).
        "test_agreement_logit_std": jnp.mean(jnp.std(routed.logits, axis=-1)),
        "test_effective_weight_norm": effective_norm,
        "test_effective_weight_ratio": effective_norm / jnp.mean(block_norms),
    }

  return evaluate


def make_sampler(config, mh: bool = False, states: bool = False):
  """Jitted `(params, key, marginals) -> (sample means, acceptance rate)`,
  or `(binary states, means, acceptance rate)` with `states`.

  `config.num_samples` chains start from the data marginals and run
  `config.sample_steps` Gibbs steps with routing (MH-corrected if `mh`).
  """
  kernel = factories.sampling_kernel(config, mh)

  @jax.jit
  def sample(params, key, marginals):
    state, info = capsjax.sample_from_marginals(
        key, kernel, params, marginals, num_chains=config.num_samples,
        num_steps=config.sample_steps)
    out = (info.last.visible_mean, jnp.mean(info.acceptance_rate))
    return (state.v,) + out if states else out

  return sample


def anneal_sampler(config, num_betas: int):
  """Jitted `(params, key, marginals) -> (binary states, acceptance)`: the
  final states of `config.num_samples` AIS runs from the base model with
  the data's marginals (`capsjax.base_rate_bias`) to the model."""
  routing = factories.make_routing(config)

  @jax.jit
  def sample(params, key, marginals):
    result = capsjax.ais(key, params, routing, num_betas=num_betas,
                         num_runs=config.num_samples,
                         base_bias=capsjax.base_rate_bias(marginals[None]))
    return result.samples, result.acceptance_rate

  return sample


def draw(config, front_end: visible.FrontEnd, params, key, marginals, *,
         method: str, mh: bool = False, num_betas: int = 1_000
         ) -> tuple[np.ndarray, np.ndarray, float]:
  """(binary states (N, Nv, Dv), images (N, 28, 28) in [0, 1], acceptance)
  of `config.num_samples` samples by `method` ("gibbs" or "anneal")."""
  marginals = jnp.asarray(marginals)
  if method == "gibbs":
    states, means, rate = make_sampler(config, mh, states=True)(
        params, key, marginals)
  elif method == "anneal":
    states, rate = anneal_sampler(config, num_betas)(params, key, marginals)
    means = states
  else:
    raise ValueError(f"method must be 'gibbs' or 'anneal'; got {method!r}")
  to_images = functools.partial(visible.to_numpy_images, front_end)
  samples = np.clip(to_images(means), 0.0, 1.0).astype(np.float32)
  return np.asarray(states), samples, float(rate)


def sample_figure(config, front_end: visible.FrontEnd, sampler, params, key,
                  test_grey, marginals):
  """A PNG-ready grid: model samples, then test images and reconstructions.

  Pixel patches: rows of binarized test digits, each followed by its
  one-pass reconstruction. Other front ends: rows of test digits, the
  decoded binarized visible capsules (what the front end alone keeps), and
  the decoded one-pass reconstruction. Samples and reconstructions are
  decoded through the front end (`visible.FrontEnd.decode`).
  """
  nrow = 10
  chain_key, binarize_key = jax.random.split(key)
  samples, acceptance = sampler(params, chain_key, marginals)
  test_v = visible.to_capsules(front_end, config.binarize,
                               test_grey[:nrow * 2], binarize_key)
  c = capsjax.route_visible(params, test_v, factories.make_routing(config))
  recon = capsjax.reconstruct(params, test_v, c)
  to_img = functools.partial(visible.to_numpy_images, front_end)
  test_img, recon_img = to_img(test_v), to_img(recon)
  rows = []
  for half in (slice(None, nrow), slice(nrow, None)):
    if front_end.kind != "patches":
      rows.append(np.asarray(test_grey[:nrow * 2])[half])
    rows += [test_img[half], recon_img[half]]
  blocks = (images.grid(to_img(samples), nrow),
            images.grid(np.concatenate(rows), nrow))
  return blocks, float(acceptance)
