"""Baselines outside the capsule runner: scikit-learn's BernoulliRBM as a
capsjax run, and every training mode on 2x2 bars-and-stripes."""
