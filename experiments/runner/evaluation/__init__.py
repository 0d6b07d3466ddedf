"""Test-set evaluation of a trained workdir (docs/model.md section 7), one
measure per module:

  capsules    the binarized visible capsules of a split, by batches
  likelihood  AIS and reverse AIS (RAISE) log-likelihoods; the AIS
              reliability study over seeds and schedules
  probes      reconstruction error, linear probe, k-means clustering
  frechet     the Fréchet distance of model samples on classifier features
  diversity   the classifier's class histogram of those samples
  report      eval.json / eval.md (and the AIS reliability table)
  suite       `evaluate`: every measure, with metadata and wall times
"""
