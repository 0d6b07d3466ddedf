"""likelihood.ais_estimates (experiments.ais_reliability) against exact
likelihoods by enumeration."""

import jax.numpy as jnp
import numpy as np

import capsjax
from experiments.runner.evaluation import likelihood
from experiments.runner.evaluation import report
from tests import reference

NV, DV, NH, DH = 3, 3, 2, 3  # 9 visible neurons: enumerable


def _params(seed, w_std):
  rng = np.random.default_rng(seed)
  return {"W": jnp.asarray(w_std * rng.normal(size=(NV, NH, DH, DV)),
                           jnp.float32),
          "a": jnp.asarray(0.5 * rng.normal(size=(NV, DV)), jnp.float32),
          "b": jnp.asarray(0.5 * rng.normal(size=(NH, DH)), jnp.float32)}


def _test_set(seed):
  return (np.random.default_rng(seed).random((40, NV, DV)) < 0.4).astype(
      np.float32)


def test_estimates_agree_with_enumeration_across_seeds_and_schedules():
  params = _params(0, w_std=1.0)
  test_v = _test_set(1)
  rows = likelihood.ais_estimates(
      params, capsjax.Routing(3), test_v, jnp.zeros((NV, DV)),
      schedules=["piecewise", "linear"],
      num_betas=[300], seeds=2, num_runs=64, batch_size=16)
  assert [(r["schedule"], r["seed"]) for r in rows] == [
      ("piecewise", 0), ("piecewise", 1), ("linear", 0), ("linear", 1)]
  states, log_p = reference.routed_log_probs(
      {k: np.asarray(v, np.float64) for k, v in params.items()}, 3)
  index = {s.tobytes(): i for i, s in enumerate(states.astype(np.float32))}
  exact = np.mean([log_p[index[v.tobytes()]] for v in test_v])
  for r in rows:
    assert r["reliable"]
    assert abs(r["test_log_prob_mean"] - exact) < 3 * r["log_z_std"] + 0.02
  for s in likelihood.ais_summary(rows):
    assert s["reliable_seeds"] == 2
    assert abs(s["test_log_prob_mean"] - exact) < 0.1
    assert s["test_log_prob_spread"] >= 0
    assert exact <= s["upper_bound_95"] < exact + np.log(2 / 0.05) + 0.1


def test_degenerate_estimates_are_not_summarized():
  """Two betas (importance sampling from a uniform base) on a strongly
  coupled layer: the weights collapse, the summary quotes nothing."""
  rows = likelihood.ais_estimates(
      _params(2, w_std=4.0), capsjax.Routing(3), _test_set(3),
      jnp.zeros((NV, DV)), schedules=["linear"], num_betas=[2], seeds=2,
      num_runs=16, batch_size=16)
  assert not any(r["reliable"] for r in rows)
  assert all(r["ess"] < capsjax.ess_threshold(16) for r in rows)
  (s,) = likelihood.ais_summary(rows)
  assert s["reliable_seeds"] == 0 and s["test_log_prob_mean"] is None
  # The bound still holds (here it is loose: the estimates are far off).
  states, log_p = reference.routed_log_probs(
      {k: np.asarray(v, np.float64) for k, v in _params(2, 4.0).items()}, 3)
  index = {x.tobytes(): i for i, x in enumerate(states.astype(np.float32))}
  exact = np.mean([log_p[index[v.tobytes()]] for v in _test_set(3)])
  assert exact <= s["upper_bound_95"]
  assert "degenerate: not quoted" in report.ais_markdown(rows, "t")
