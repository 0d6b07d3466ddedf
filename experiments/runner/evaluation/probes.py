"""What the hidden units know: the one-pass reconstruction error, a linear
probe on the hidden probabilities, and k-means clustering accuracy
(clusters matched to labels by the Hungarian method, as stacked capsule
autoencoders report it)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from sklearn import cluster as sk_cluster
from sklearn import linear_model
from sklearn import pipeline
from sklearn import preprocessing

import capsjax
from experiments.runner import data as data_io


@functools.partial(jax.jit, static_argnums=2)
def _reconstruction_batch(params, v, routing):
  routed = capsjax.route_from_visible(params, v, routing)
  h = jax.nn.sigmoid(params["b"] + routed.inputs)  # p(h | v; c(v))
  m = capsjax.visible_probs(params, h, routed.coefficients)
  return jnp.mean(jnp.square(v - m), axis=(-2, -1))


@functools.partial(jax.jit, static_argnums=2)
def _features_batch(params, v, routing):
  # Routing's final weighted sum is the hidden input s(v; c(v)).
  h = jax.nn.sigmoid(params["b"] + capsjax.route_from_visible(
      params, v, routing).inputs)
  return h.reshape(h.shape[0], -1)


@functools.partial(jax.jit, static_argnums=2)
def _coefficients_batch(params, v, routing):
  return capsjax.route_visible(params, v, routing)


# The parse fraction's sample: the first 1,000 test digits
# (capsjax.routing_parse; docs/model.md section 2).
PARSE_EXAMPLES = 1_000


def routing_diagnostics(params, v: np.ndarray, labels: np.ndarray,
                        routing: capsjax.Routing, batch_size: int) -> dict:
  """Routing entropy and `capsjax.routing_parse` on the first
  PARSE_EXAMPLES of v (binary capsules) and their labels."""
  if not routing.routed:
    return {"computed": False, "note": "unrouted layer: c = 1/Nh"}
  v, labels = v[:PARSE_EXAMPLES], labels[:PARSE_EXAMPLES]
  c = data_io.batched(lambda x: _coefficients_batch(params, x, routing), v,
                      batch_size)
  parse = capsjax.routing_parse(jnp.asarray(c), jnp.asarray(v),
                                jnp.asarray(labels))
  return {"computed": True, "num_examples": len(v),
          "entropy_nats": float(jnp.mean(capsjax.routing_entropy(c))),
          "parse_fraction": float(parse.parse_fraction),
          "num_qualifying": int(parse.num_qualifying),
          "class_information_nats": float(parse.class_information)}


def reconstruction_errors(params, v: np.ndarray, routing: capsjax.Routing,
                          batch_size: int) -> np.ndarray:
  """Per-example mean squared error of one up-down pass with c(v), (N,)."""
  return data_io.batched(lambda x: _reconstruction_batch(params, x, routing),
                         v, batch_size)


def hidden_features(params, v: np.ndarray, routing: capsjax.Routing,
                    batch_size: int) -> np.ndarray:
  """Hidden probabilities p(h | v; c(v)), flattened to (N, Nh*Dh)."""
  return data_io.batched(lambda x: _features_batch(params, x, routing),
                         v, batch_size)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *,
                          max_iter: int = 1_000) -> float:
  """Test accuracy of logistic regression fit on (train_x, train_y).

  The features are standardized first (still a linear probe): hidden
  probabilities near 0 or 1 otherwise slow L-BFGS down.
  """
  probe = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(max_iter=max_iter))
  probe.fit(train_x, train_y)
  return float(probe.score(test_x, test_y))


def clustering_accuracy(labels, clusters) -> float:
  """Accuracy of the best one-to-one map from clusters to labels.

  The Hungarian method on the cluster-label contingency table; with more
  clusters than labels the unmatched clusters count as errors.
  """
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  if labels.shape != clusters.shape or labels.ndim != 1:
    raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} "
                     "must be equal-length vectors")
  _, label_ids = np.unique(labels, return_inverse=True)
  _, cluster_ids = np.unique(clusters, return_inverse=True)
  counts = np.zeros((cluster_ids.max() + 1, label_ids.max() + 1), np.int64)
  np.add.at(counts, (cluster_ids, label_ids), 1)
  rows, cols = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum() / len(labels))


def kmeans_accuracy(features, labels, *, num_clusters: int = 10,
                    seed: int = 0) -> float:
  """k-means on `features`, scored by `clustering_accuracy`."""
  kmeans = sk_cluster.KMeans(n_clusters=num_clusters, random_state=seed,
                             n_init=10)
  return clustering_accuracy(labels, kmeans.fit_predict(features))
