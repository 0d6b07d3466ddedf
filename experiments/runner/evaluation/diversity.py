"""Sample diversity: the feature classifier's class histogram of model
samples, its entropy and the classes above DIVERSITY_THRESHOLD."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from experiments.runner.models import classifier as classifier_lib

# Sample diversity: a class counts as present when more than this fraction
# of the samples fall in it.
DIVERSITY_THRESHOLD = 0.03


def class_diversity(histogram, threshold: float = DIVERSITY_THRESHOLD
                    ) -> dict:
  """Entropy in nats of a class histogram (counts), and the number of
  classes holding more than `threshold` of it. Uniform over 10 classes:
  log 10 = 2.303 nats and 10 classes; one class: 0 and 1."""
  counts = np.asarray(histogram, np.float64)
  if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0) or (
      counts.sum() <= 0):
    raise ValueError(f"histogram must be a non-empty vector of counts, not "
                     f"all zero; got {histogram!r}")
  p = counts / counts.sum()
  nonzero = p[p > 0]
  return {"entropy_nats": float(-np.sum(nonzero * np.log(nonzero))),
          "max_entropy_nats": float(np.log(len(p))),
          "classes_above_threshold": int(np.sum(p > threshold)),
          "threshold": threshold}


def classify(classifier: classifier_lib.Loaded, features) -> np.ndarray:
  """Predicted classes (N,) from the classifier's penultimate `features`
  (N, F) (`classifier.features(images)`): argmax of its logits."""
  logits = classifier.model.head(jnp.asarray(features, jnp.float32))
  return np.asarray(jnp.argmax(logits, axis=-1))


def sample_diversity(classifier: classifier_lib.Loaded, features) -> dict:
  """The class histogram of samples (by their classifier `features`), its
  entropy and the classes above `DIVERSITY_THRESHOLD` (`class_diversity`).
  A `Loaded` without a network (features alone) cannot classify: not
  computed."""
  if getattr(classifier.model, "head", None) is None:
    return {"computed": False,
            "note": "the feature classifier has no class head"}
  histogram = np.bincount(classify(classifier, features),
                          minlength=classifier_lib.NUM_CLASSES)
  return {"computed": True,
          "class_histogram": [int(c) for c in histogram],
          **class_diversity(histogram)}
