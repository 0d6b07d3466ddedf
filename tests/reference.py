"""Independent numpy references: plain loops transcribed from the papers.

Nothing here imports capsjax; tests compare capsjax against these.
"""

import itertools

import numpy as np


def squash(s):
  n2 = float(np.dot(s, s))
  if n2 == 0.0:
    return np.zeros_like(s)
  return n2 / (1.0 + n2) * s / np.sqrt(n2)


def route(u_hat, r, temperature=1.0, rule="sabour"):
  """Sabour et al. 2017, Procedure 1, for one example; u_hat (Nv, Nh, Dh).

  Returns the coefficients c (Nv, Nh) used in the last iteration. With a
  temperature T each softmax is taken of the logits divided by T. rule:
  the agreement, "sabour" (u . squash(s)), "cosine" (cos(u, s), 0 where
  u or s is 0) or "normalized" (Procedure 1 on u / |u|, 0 votes kept 0).
  """
  nv, nh, _ = u_hat.shape
  if rule == "normalized":
    norms = np.linalg.norm(u_hat, axis=-1, keepdims=True)
    u_hat = np.where(norms > 0, u_hat / np.where(norms > 0, norms, 1), 0)
  b = np.zeros((nv, nh))
  for _ in range(r):
    c = np.zeros((nv, nh))
    for i in range(nv):
      e = np.exp((b[i] - b[i].max()) / temperature)
      c[i] = e / e.sum()
    s = [sum(c[i, j] * u_hat[i, j] for i in range(nv)) for j in range(nh)]
    for i in range(nv):
      for j in range(nh):
        if rule == "cosine":
          norm = np.linalg.norm(u_hat[i, j]) * np.linalg.norm(s[j])
          b[i, j] += float(np.dot(u_hat[i, j], s[j])) / norm if norm else 0.0
        else:
          b[i, j] += float(np.dot(u_hat[i, j], squash(s[j])))
  return c


def predictions(W, v):
  nv, nh, dh, _ = W.shape
  u = np.zeros((nv, nh, dh))
  for i in range(nv):
    for j in range(nh):
      u[i, j] = W[i, j] @ v[i]
  return u


def energy(params, v, h, c, visible="bernoulli"):
  """E(v, h; c) of docs/model.md section 3 for one example, by explicit sums."""
  W, a, b = (np.asarray(params[k], np.float64) for k in ("W", "a", "b"))
  nv, nh, _, _ = W.shape
  e = 0.0
  for i in range(nv):
    for j in range(nh):
      e -= c[i, j] * float(h[j] @ W[i, j] @ v[i])
  if visible == "bernoulli":
    e -= float(np.sum(a * v))
  else:
    e += 0.5 * float(np.sum((v - a) ** 2))
  return e - float(np.sum(b * h))


def binary_states(shape):
  """All binary arrays of `shape`, (2**size, *shape)."""
  n = int(np.prod(shape))
  return np.array(list(itertools.product([0.0, 1.0], repeat=n))).reshape(
      (2 ** n,) + tuple(shape))


def free_energy(params, v, c, visible="bernoulli"):
  """-log sum_h exp(-E(v, h; c)), by enumerating h."""
  nh, dh = np.shape(params["b"])
  neg_e = np.array([-energy(params, v, h, c, visible)
                    for h in binary_states((nh, dh))])
  m = neg_e.max()
  return -(m + np.log(np.sum(np.exp(neg_e - m))))


def routed_log_probs(params, r, temperature=1.0, rule="sabour"):
  """log p(v) of the routed model (docs/model.md section 4) for every binary v.

  Returns (states (S, Nv, Dv), log_p (S,)). `r` routing iterations at
  routing temperature `temperature` (see `route`).
  """
  W = np.asarray(params["W"], np.float64)
  t = float(temperature)
  nv, _, _, dv = W.shape
  states = binary_states((nv, dv))
  neg_f = np.array([-free_energy(params, v,
                                 route(predictions(W, v), r, t, rule))
                    for v in states])
  m = neg_f.max()
  return states, neg_f - (m + np.log(np.sum(np.exp(neg_f - m))))


def bars_and_stripes(n):
  """All distinct n x n bars-and-stripes images, (2**(n+1) - 2, n, n)."""
  patterns = set()
  for bits in itertools.product([0.0, 1.0], repeat=n):
    rows = np.repeat(np.array(bits)[:, None], n, axis=1)
    patterns.add(rows.tobytes())
    patterns.add(rows.T.copy().tobytes())
  return np.stack([np.frombuffer(p).reshape(n, n) for p in sorted(patterns)])
