r"""CD training throughput beside sklearn's BernoulliRBM and the roofline.

    # full, ~3 min on an idle 2-core machine:
    python -m benchmarks.cd_benchmark --out=bench.json
    # smoke, ~1 min:
    python -m benchmarks.cd_benchmark --quick --out=/tmp/b.json
    # on a GPU host (scikit-learn still runs on its CPU):
    python -m benchmarks.cd_benchmark --platform=gpu --out=bench_gpu.json

Everything runs in one process, float32, on random binary data (throughput
does not depend on the values). Measured in the same run:

* the machine's ceiling: a large jitted float32 matmul, GFLOP/s;
* `capsjax.train_step` (CD-k through `optax.sgd`, with `capsjax.cd_monitors`
  unless a case is "lean") throughput, examples/s,
  for (a) the plain-RBM-equivalent layer 49x16 -> 32x16 with one routing
  iteration (784 -> 512 neurons) and (b) routed layers 49x16 -> 32x16 and
  144x8 -> 10x16 with 1, 3 and 5 iterations (and the routed lean case
  with routing chunked into 2 MB of votes, the memory-bounded setting);
  beside scikit-learn's
  `BernoulliRBM(n_components=512, batch_size=100)` fitted on the same data
  (float32), measured round-robin with them so that load from other
  processes hits all alike (ratios are the robust figures on a shared
  machine);
* (c) routing alone (predictions + 3 iterations) at Sabour et al.'s digit
  capsules, 1152x8 -> 10x16, batch 128, forward and with gradient;
* (d) AIS throughput, betas x runs per second, and for r = 3 its floors
  per beta (routing the runs' proposals; that plus the two c-scaled visible
  inputs an MH transition needs), timed in the same rounds;
* (e) the parts of the routed CD-1 step at 49x16 -> 32x16, r = 3 (routing,
  each conditional and the weight statistics with per-example
  coefficients), timed in the same rounds: what bounds case (b);
* per case: FLOPs per step counted analytically and by XLA's cost analysis,
  % of the measured ceiling, XLA's buffer sizes (arguments + outputs +
  temporaries) as the peak memory (and the routed lean steps' against the
  unrouted one's), and whether any call recompiled.

Times are medians over repeats after a warm-up call (which compiles).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import time
from typing import Callable, NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import capsjax
from capsjax import routing as routing_lib


class Layer(NamedTuple):
  nv: int  # lower capsules
  dv: int  # neurons per lower capsule
  nh: int  # upper capsules
  dh: int  # neurons per upper capsule

  def __str__(self):
    return f"{self.nv}x{self.dv}->{self.nh}x{self.dh}"


PATCHES = Layer(49, 16, 32, 16)   # 784 -> 512 neurons: 4x4 pixel patches
PAPER = Layer(144, 8, 10, 16)     # the paper's 144 capsules -> 10
SABOUR = Layer(1152, 8, 10, 16)   # Sabour et al.'s primary -> digit capsules

BATCH = 100
PAUSE_S = 0.2  # between timed calls (see `_round_robin`)


# --------------------------------------------------------------------------
# Timing and compiled-program statistics.


def _time_once(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _round_robin(fns: dict[str, Callable[[], object]], repeats: int
                 ) -> dict[str, list[float]]:
  """Seconds per call of each fn, one call of each per round after a warm-up.

  Round-robin, so that a burst of load from other processes slows every
  case of a round alike rather than one case's repeats. A pause after each
  call lets the previous case's threads go idle (OpenBLAS's spin-wait after
  scikit-learn's fit slowed the next case by half).
  """
  for fn in fns.values():
    _time_once(fn)
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      time.sleep(PAUSE_S)
      times[name].append(_time_once(fn))
  return times


def _compiled_stats(jitted, *args, **kwargs) -> dict:
  """XLA's FLOP count and buffer sizes of `jitted` at these arguments."""
  compiled = jitted.lower(*args, **kwargs).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0]
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
            + mem.output_size_in_bytes - mem.alias_size_in_bytes)
  return {"xla_flops": float(cost.get("flops", float("nan"))),
          "peak_bytes": peak}


def matmul_ceiling(n: int, repeats: int) -> dict:
  """GFLOP/s of a jitted n x n float32 matmul: the machine's ceiling."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32)
  b = jax.random.normal(keys[1], (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  times = _round_robin({"matmul": lambda: matmul(a, b)}, repeats)["matmul"]
  seconds = float(np.median(times))
  return {"n": n, "seconds": seconds, "gflops": 2 * n ** 3 / seconds / 1e9,
          "best_gflops": 2 * n ** 3 / min(times) / 1e9}


# --------------------------------------------------------------------------
# Analytic FLOP counts (multiply-adds count 2), matching the implementation.


def contraction_flops(layer: Layer, batch: int) -> int:
  """One full contraction, e.g. s = sum_i c_ij W_ij v_i.

  At 784 -> 512 neurons: a (B, 784) x (784, 512) matmul.
  """
  return 2 * batch * layer.nv * layer.dv * layer.nh * layer.dh


def routing_flops(layer: Layer, batch: int, r: int) -> int:
  """Votes, then r - 1 (weighted sum + agreement) and one more weighted sum."""
  if r == 1:
    return 0  # uniform: no votes computed
  votes = contraction_flops(layer, batch)
  weighted_sum = 2 * batch * layer.nv * layer.nh * layer.dh  # = agreement
  return votes + (2 * (r - 1) + 1) * weighted_sum


def cd_step_flops(layer: Layer, batch: int, k: int, r: int,
                  monitors: bool = True) -> int:
  """The dominant FLOPs of one `cd_step` (CD-k, rerouting each sample).

  Contractions: 2 per Gibbs step (hidden, visible), the negative hidden
  probabilities, two weight statistics, and, for k > 1, the data's hidden
  probabilities again (the chain's first step runs inside the scan, so XLA
  cannot share it). With `monitors`, `cd_monitors` adds the
  reconstruction's visible pass (its hidden inputs are the step's, which
  XLA shares). Routing: the data's and one per Gibbs
  step. Elementwise work (sampling, sigmoids, the optimizer) is
  O(B (Nv Dv + Nh Dh) + |W|) and left out.
  """
  contractions = 2 * k + 3 + int(monitors) + (1 if k > 1 else 0)
  return (contractions * contraction_flops(layer, batch)
          + (k + 1) * routing_flops(layer, batch, r))


# --------------------------------------------------------------------------
# Cases.


def _params(layer: Layer, seed: int = 0):
  key = jax.random.key(seed)
  return {"W": 0.01 * layer.nh * jax.random.normal(
              key, (layer.nv, layer.nh, layer.dh, layer.dv), jnp.float32),
          "a": jnp.zeros((layer.nv, layer.dv), jnp.float32),
          "b": jnp.zeros((layer.nh, layer.dh), jnp.float32)}


def _binary_data(num_examples: int, num_pixels: int, seed: int = 0
                 ) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (rng.random((num_examples, num_pixels)) < 0.2).astype(np.float32)


def cd_step(key, state, batch, *, optimizer, kernel, k: int = 1,
            monitors: bool = True):
  """The timed step: `capsjax.train_step`, then (as the runner logs them)
  `capsjax.cd_monitors` of the parameters it started from, unless lean."""
  new_state, info = capsjax.train_step(key, state, batch,
                                       optimizer=optimizer, kernel=kernel,
                                       k=k)
  if not monitors:
    return new_state, None
  return new_state, capsjax.cd_monitors(state.params, batch, info,
                                        kernel=kernel)


class TrainCase(NamedTuple):
  name: str
  group: str
  layer: Layer
  k: int
  r: int
  monitors: bool = True       # cd_monitors' reconstruction / F-gap monitors
  prng: str = "threefry2x32"  # jax.random key implementation
  # Route every batch in chunks of this many bytes of votes (the CPU's
  # memory-bounded setting; None: the library's default for the backend).
  chunk_bytes: int | None = None


def train_cases(quick: bool) -> list[TrainCase]:
  cases = [TrainCase("a_plain_cd1", "a", PATCHES, 1, 1),
           # Without the monitors, and with XLA's RngBitGenerator keys
           # instead of threefry: the two non-matmul costs the profile shows.
           TrainCase("a_plain_cd1_lean", "a", PATCHES, 1, 1, monitors=False),
           TrainCase("a_plain_cd1_lean_rbg", "a", PATCHES, 1, 1,
                     monitors=False, prng="rbg"),
           TrainCase("a_plain_cd5", "a", PATCHES, 5, 1)]
  iterations = (3,) if quick else (3, 5)
  for layer in (PATCHES, PAPER):
    for r in ((1,) if layer == PAPER else ()) + iterations:
      for k in ((1,) if quick else (1, 5)):
        cases.append(TrainCase(f"b_{layer}_r{r}_cd{k}", "b", layer, k, r))
  # The routed target's case without the monitors, like sklearn's step,
  # and the same with routing chunked to bound its memory.
  cases.append(TrainCase(f"b_{PATCHES}_r3_cd1_lean", "b", PATCHES, 1, 3,
                         monitors=False))
  cases.append(TrainCase(f"b_{PATCHES}_r3_cd1_lean_chunked", "b", PATCHES, 1,
                         3, monitors=False, chunk_bytes=2 ** 21))
  return cases


@contextlib.contextmanager
def routing_chunks(chunk_bytes):
  """Routes every batch in chunks of `chunk_bytes` of votes while tracing
  (the library reads its chunk sizes at trace time); None: unchanged."""
  if chunk_bytes is None:
    yield
    return
  saved = routing_lib.CHUNK_ABOVE_BYTES, routing_lib.CHUNK_BYTES
  routing_lib.CHUNK_ABOVE_BYTES, routing_lib.CHUNK_BYTES = 0, chunk_bytes
  try:
    yield
  finally:
    routing_lib.CHUNK_ABOVE_BYTES, routing_lib.CHUNK_BYTES = saved


# (e)'s floors of a CD-1 step (ms from the parts `comp` and the measured
# unrouted lean step `lean`): name, formula, value.
FLOORS = (
    # the unrouted step: its five matrix products and its two Bernoulli
    # draws, with nothing else (no optimizer, no layout changes);
    ("unrouted_floor", "rbm_products + bernoulli",
     lambda comp, lean: comp["rbm_products"] + comp["bernoulli"]),
    # the routed step (rerouted negatives): two routings, the visible
    # conditional and two weight statistics with per-example c (the
    # hidden inputs come from routing), and the draws;
    ("routed_floor", "2 x route_visible + visible_probs + "
     "2 x interaction_statistics + bernoulli",
     lambda comp, lean: (2 * comp["route_visible"] + comp["visible_probs"]
                         + 2 * comp["interaction_statistics"]
                         + comp["bernoulli"])),
    # the same if the per-example-c products ran at the unrouted step's
    # speed, and if besides every routing iteration were free.
    ("routed_floor_rbm_speed", "2 x route_visible + a_plain_cd1_lean step",
     lambda comp, lean: 2 * comp["route_visible"] + lean),
    ("votes_floor", "2 x votes + a_plain_cd1_lean step",
     lambda comp, lean: 2 * comp["votes"] + lean),
)


def _rbm_products(W, v):
  """The unrouted CD-1 step's five matrix products (shared c = 1/Nh), with
  their sigmoids and no sampling: its arithmetic floor."""
  m = capsjax.energies._shared_matrix(  # pylint: disable=protected-access
      {"W": W}, jnp.full(W.shape[:2], 1.0 / W.shape[1], W.dtype))
  x = v.reshape(v.shape[0], -1)
  h = jax.nn.sigmoid(x @ m)
  x_neg = jax.nn.sigmoid(h @ m.T)
  h_neg = jax.nn.sigmoid(x_neg @ m)
  return jnp.concatenate([x, x_neg]).T @ jnp.concatenate([h, -h_neg])


def _bernoulli(key, p_h, p_v):
  """The step's two draws (hidden and visible), with `key`'s generator."""
  key_h, key_v = jax.random.split(key)
  return (jax.random.bernoulli(key_h, p_h), jax.random.bernoulli(key_v, p_v))


def _votes(W, v):
  """`predictions` laid out (Nv, B, Nh Dh): one batched product over i, no
  transposition of the output."""
  nv, nh, dh, dv = W.shape
  return jax.lax.dot_general(jnp.swapaxes(v, 0, 1),
                             W.reshape(nv, nh * dh, dv),
                             (((2,), (2,)), ((0,), (0,))))


def component_fns(layer: Layer = PATCHES, r: int = 3
                  ) -> dict[str, Callable[[], object]]:
  """(e): the parts of the CD-1 steps, each jitted alone, batch 100.

  The unrouted step's five matrix products (`rbm_products`) and its two
  Bernoulli draws (`bernoulli`, threefry) bound case (a).

  A CD-1 step with rerouted negatives routes twice (the data and the
  negative sample) and, besides, does the RBM step's five contractions
  with per-example coefficients: `hidden_probs` twice (once shared with
  the data's statistics), `visible_probs` once, `interaction_statistics`
  twice. `votes` (the batch's votes, in their cheapest layout) is the
  part of routing no implementation can skip.
  """
  params = _params(layer)
  v = jnp.asarray(_binary_data(BATCH, layer.nv * layer.dv, 4).reshape(
      BATCH, layer.nv, layer.dv))
  routing = capsjax.Routing(r)
  c = jax.jit(capsjax.route_visible, static_argnums=2)(params, v, routing)
  h = jnp.asarray(_binary_data(BATCH, layer.nh * layer.dh, 5).reshape(
      BATCH, layer.nh, layer.dh))
  parts = {
      "rbm_products": (_rbm_products, (params["W"], v)),
      "bernoulli": (_bernoulli, (jax.random.key(2), jnp.full(h.shape, 0.3),
                                 jnp.full(v.shape, 0.3))),
      "votes": (_votes, (params["W"], v)),
      "route_visible": (functools.partial(capsjax.route_visible,
                                          routing=routing), (params, v)),
      "hidden_probs": (capsjax.hidden_probs, (params, v, c)),
      "visible_probs": (capsjax.visible_probs, (params, h, c)),
      "interaction_statistics": (capsjax.interaction_statistics, (v, h, c)),
  }
  fns = {}
  for name, (fn, args) in parts.items():
    jitted = jax.jit(fn)
    fns[f"e_{name}"] = functools.partial(jitted, *args)
  return fns


def _train_epoch_fn(case: TrainCase, data: np.ndarray, steps: int):
  """A callable running `steps` jitted train steps; (jitted step, its args,
  a one-element list counting the step's traces)."""
  layer = case.layer
  opt = optax.sgd(0.01)
  step_fn = functools.partial(
      cd_step, optimizer=opt, kernel=capsjax.gibbs(capsjax.Routing(case.r)),
      k=case.k, monitors=case.monitors)
  traces = [0]

  def counted_step(*args):
    traces[0] += 1  # a Python side effect: runs once per trace, not per call
    with routing_chunks(case.chunk_bytes):
      return step_fn(*args)

  step = jax.jit(counted_step)
  batches = [jnp.asarray(data[i * BATCH:(i + 1) * BATCH].reshape(
      BATCH, layer.nv, layer.dv)) for i in range(steps)]
  state0 = capsjax.init_train_state(_params(layer), opt)
  key = jax.random.key(1, impl=case.prng)
  holder = {"state": state0}

  def epoch():
    state = holder["state"]
    for batch in batches:
      state, monitors = step(key, state, batch)
    holder["state"] = state
    return state, monitors

  return epoch, (step, (key, state0, batches[0]), traces)


def _sklearn_epoch_fn(data: np.ndarray):
  from sklearn.neural_network import BernoulliRBM  # pylint: disable=g-import-not-at-top

  def epoch():
    # n_iter=1: one pass, batch_size 100, over float32 data (fit keeps
    # float32; partial_fit would convert to float64).
    BernoulliRBM(n_components=512, batch_size=BATCH, n_iter=1,
                 learning_rate=0.1, random_state=0).fit(data)

  return epoch


def training_benchmark(quick: bool, repeats: int, steps: int,
                       sklearn_examples: int, ceiling_gflops: float
                       ) -> tuple[dict, list[dict], dict]:
  data = _binary_data(max(steps * BATCH, sklearn_examples), 784)
  cases = train_cases(quick)
  fns, jitted = {}, {}
  for case in cases:
    n_pix = case.layer.nv * case.layer.dv
    case_data = data if n_pix == 784 else _binary_data(steps * BATCH, n_pix, 1)
    fns[case.name], jitted[case.name] = _train_epoch_fn(case, case_data, steps)
  fns["sklearn"] = _sklearn_epoch_fn(data[:sklearn_examples])
  parts = component_fns()
  # A part is one call; repeat it `steps` times per round like a case.
  for name, fn in parts.items():
    fns[name] = lambda fn=fn: [fn() for _ in range(steps)][-1]
  times = _round_robin(fns, repeats)

  sk_times = np.asarray(times["sklearn"])
  sklearn = {"examples": sklearn_examples,
             "seconds": float(np.median(sk_times)),
             "examples_per_s": sklearn_examples / float(np.median(sk_times))}
  results = []
  for case in cases:
    step, example_args, traces = jitted[case.name]
    # Traces of the step over the warm-up and all timed steps (each new
    # input signature is traced and compiled once): 1 if no step recompiled.
    # Read before `_compiled_stats`, whose lowering may trace again.
    compilations = traces[0]
    stats = _compiled_stats(step, *example_args)
    t = np.asarray(times[case.name])
    per_step = float(np.median(t)) / steps
    flops = cd_step_flops(case.layer, BATCH, case.k, case.r, case.monitors)
    # Paired ratios: each round's capsjax rate over the same round's sklearn.
    paired = (steps * BATCH / t) / (sklearn_examples / sk_times)
    results.append({
        "case": case.name, "group": case.group, "layer": str(case.layer),
        "neurons": f"{case.layer.nv * case.layer.dv}->"
                   f"{case.layer.nh * case.layer.dh}",
        "batch": BATCH, "cd_k": case.k, "num_iterations": case.r,
        "reroute": True, "monitors": case.monitors, "prng": case.prng,
        "examples_per_s": BATCH / per_step,
        "best_examples_per_s": BATCH * steps / float(np.min(t)),
        "step_ms": 1e3 * per_step,
        "ratio_vs_sklearn": float(np.median(paired)),
        "analytic_flops": flops,
        "xla_flops": stats["xla_flops"],
        "gflops": flops / per_step / 1e9,
        "roofline_pct": 100 * flops / per_step / 1e9 / ceiling_gflops,
        "peak_mb": (stats["peak_bytes"] or 0) / 2 ** 20,
        "compilations": compilations,
    })
  components = {name[2:]: 1e3 * float(np.median(times[name])) / steps
                for name in parts}
  lean = {t["case"]: t["step_ms"] for t in results}["a_plain_cd1_lean"]
  sklearn_step_ms = 1e3 * sklearn["seconds"] / sklearn_examples * BATCH
  floors = {}
  for name, formula, floor in FLOORS:
    ms = floor(components, lean)
    floors[name] = {"formula": formula, "ms": ms,
                    "ratio_vs_sklearn": sklearn_step_ms / ms}
  return sklearn, results, {"ms": components, "floors": floors}


def routing_benchmark(quick: bool, repeats: int) -> list[dict]:
  """(c): predictions + 3 routing iterations at Sabour et al.'s size."""
  layer, batch, r = (PAPER, 16, 3) if quick else (SABOUR, 128, 3)
  params = _params(layer)
  v = jnp.asarray(_binary_data(batch, layer.nv * layer.dv, 2).reshape(
      batch, layer.nv, layer.dv))

  def outputs(W, v):  # the public two-step API: the votes exist once
    p = {**params, "W": W}
    return capsjax.route(capsjax.predictions(p, v), routing).outputs

  routing = capsjax.Routing(r)
  forward = jax.jit(outputs)
  fused = jax.jit(lambda W, v: capsjax.route_visible({**params, "W": W}, v,
                                                     routing))
  grad = jax.jit(jax.grad(lambda W, v: jnp.sum(outputs(W, v) ** 2)))
  fns = {"forward": lambda: forward(params["W"], v),
         "route_visible": lambda: fused(params["W"], v),
         "gradient": lambda: grad(params["W"], v)}
  times = _round_robin(fns, repeats)
  votes_mb = batch * layer.nv * layer.nh * layer.dh * 4 / 2 ** 20
  results = []
  for name, jitted in (("forward", forward), ("route_visible", fused),
                       ("gradient", grad)):
    stats = _compiled_stats(jitted, params["W"], v)
    seconds = float(np.median(times[name]))
    flops = (contraction_flops(layer, batch)
             + routing_flops(layer, batch, r))
    results.append({
        "case": f"c_routing_{name}", "layer": str(layer), "batch": batch,
        "num_iterations": r, "ms": 1e3 * seconds,
        "examples_per_s": batch / seconds,
        "analytic_flops": flops * (3 if name == "gradient" else 1),
        "xla_flops": stats["xla_flops"],
        "peak_mb": (stats["peak_bytes"] or 0) / 2 ** 20,
        "votes_mb": votes_mb,
    })
  return results


def ais_benchmark(quick: bool, repeats: int) -> list[dict]:
  """(d): AIS transitions (betas x runs) per second on the 784 -> 512 layer,
  and for r = 3 the floors of one transition, timed in the same rounds on
  `num_runs` states: routing the proposals alone (`route_visible`), and an
  MH transition's irreducible work (that routing and the two c-scaled
  visible inputs x(h; c), x(h; c') its proposal and acceptance need)."""
  num_betas, num_runs = (20, 10) if quick else (200, 100)
  params = _params(PATCHES)
  fns, jitted = {}, {}
  for r in (1, 3):
    jitted[r] = jax.jit(functools.partial(
        capsjax.ais, routing=capsjax.Routing(r), num_betas=num_betas,
        num_runs=num_runs))
    fns[r] = functools.partial(jitted[r], jax.random.key(3), params)
  v = jnp.asarray(_binary_data(num_runs, 784, 6).reshape(
      num_runs, PATCHES.nv, PATCHES.dv))
  h = jnp.asarray(_binary_data(num_runs, PATCHES.nh * PATCHES.dh, 7).reshape(
      num_runs, PATCHES.nh, PATCHES.dh))
  routing = capsjax.Routing(3)
  c = jax.jit(capsjax.route_visible, static_argnums=2)(params, v, routing)
  route = jax.jit(functools.partial(capsjax.route_visible, routing=routing))
  visible_input = jax.jit(capsjax.visible_input)
  # A part is one call; repeat it num_betas times per round like AIS.
  fns["route"] = lambda: [route(params, v) for _ in range(num_betas)][-1]
  fns["visible_input"] = lambda: [visible_input(params, h, c)
                                  for _ in range(num_betas)][-1]
  times = _round_robin(fns, max(2, repeats // 2))
  ms = {name: 1e3 * float(np.median(times[name])) / num_betas
        for name in ("route", "visible_input")}
  floors = {"routing": ms["route"],
            "mh": ms["route"] + 2 * ms["visible_input"]}
  results = []
  for r in (1, 3):
    seconds = float(np.median(times[r]))
    stats = _compiled_stats(jitted[r], jax.random.key(3), params)
    per_beta = 1e3 * seconds / num_betas
    row = {
        "case": f"d_ais_r{r}", "layer": str(PATCHES), "num_iterations": r,
        "num_betas": num_betas, "num_runs": num_runs, "seconds": seconds,
        "transitions_per_s": num_betas * num_runs / seconds,
        "ms_per_beta": per_beta,
        # The literature's 14,500 betas at this many runs.
        "seconds_at_14500_betas": 14500 * per_beta / 1e3,
        "peak_mb": (stats["peak_bytes"] or 0) / 2 ** 20,
    }
    if r == 3:
      row["floor_ms_per_beta"] = floors
      row["x_floor"] = {name: per_beta / f for name, f in floors.items()}
    results.append(row)
  return results


# --------------------------------------------------------------------------
# Report.


def _table(ceiling, sklearn, train, components, routing, ais) -> str:
  lines = [
      f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on "
      f"{os.cpu_count()} cores",
      f"matmul ceiling: {ceiling['gflops']:.1f} GFLOP/s "
      f"({ceiling['n']}^3 float32, median; best {ceiling['best_gflops']:.1f})",
      f"sklearn BernoulliRBM(512, batch 100, float32): "
      f"{sklearn['examples_per_s']:.0f} examples/s",
      "",
      f"{'case':<28}{'ex/s':>9}{'x sklearn':>10}{'ms/step':>9}"
      f"{'GFLOP/s':>9}{'%roof':>7}{'MFLOP':>8}{'XLA MFLOP':>10}"
      f"{'peak MB':>9}{'compiles':>9}",
  ]
  for t in train:
    lines.append(
        f"{t['case']:<28}{t['examples_per_s']:>9.0f}"
        f"{t['ratio_vs_sklearn']:>10.2f}{t['step_ms']:>9.2f}"
        f"{t['gflops']:>9.1f}{t['roofline_pct']:>7.1f}"
        f"{t['analytic_flops'] / 1e6:>8.0f}{t['xla_flops'] / 1e6:>10.0f}"
        f"{t['peak_mb']:>9.1f}{t['compilations']:>9d}")
  lines.append("")
  lines.append(
      "e: parts of the CD-1 steps (49x16->32x16, r 3, batch 100), ms: "
      + ", ".join(f"{k} {v:.2f}" for k, v in components["ms"].items()))
  for name, floor in components["floors"].items():
    lines.append(
        f"   {name} = {floor['formula']} = {floor['ms']:.2f} ms: at best "
        f"{floor['ratio_vs_sklearn']:.2f}x sklearn's throughput")
  lines.append("")
  for c in routing:
    lines.append(
        f"{c['case']:<28}{c['examples_per_s']:>9.0f} ex/s {c['ms']:>8.1f} ms"
        f"  peak {c['peak_mb']:.0f} MB (votes {c['votes_mb']:.0f} MB)"
        f"  [{c['layer']}, batch {c['batch']}]")
  for d in ais:
    lines.append(
        f"{d['case']:<28}{d['transitions_per_s']:>9.0f} betas x runs / s"
        f"  ({d['num_betas']} betas x {d['num_runs']} runs in "
        f"{d['seconds']:.2f} s, {d['ms_per_beta']:.2f} ms a beta, "
        f"{d['seconds_at_14500_betas']:.0f} s at 14,500 betas; peak "
        f"{d['peak_mb']:.0f} MB)")
    if "floor_ms_per_beta" in d:
      f, x = d["floor_ms_per_beta"], d["x_floor"]
      lines.append(
          f"   floors a beta: routing the proposals {f['routing']:.2f} ms "
          f"({x['routing']:.2f}x), routing + 2 c-scaled visible inputs "
          f"{f['mh']:.2f} ms ({x['mh']:.2f}x)")
  peak = {t["case"]: t["peak_mb"] for t in train}
  routed = [name for name in peak
            if name.startswith(f"b_{PATCHES}_r3_cd1_lean")]
  lines.append("")
  lines.append("peak memory against the unrouted lean step "
               f"({peak['a_plain_cd1_lean']:.1f} MB): " + ", ".join(
                   f"{name} {peak[name] / peak['a_plain_cd1_lean']:.2f}x"
                   for name in routed))
  return "\n".join(lines)


def run(quick: bool, repeats: int, steps: int, sklearn_examples: int) -> dict:
  if quick:
    repeats, steps, sklearn_examples = 2, 2, 500
  load_at_start = os.getloadavg()
  ceiling = matmul_ceiling(1024 if quick else 4096, max(3, repeats))
  sklearn, train, components = training_benchmark(
      quick, repeats, steps, sklearn_examples, ceiling["gflops"])
  routing = routing_benchmark(quick, repeats)
  ais = ais_benchmark(quick, repeats)
  import sklearn as sk  # pylint: disable=g-import-not-at-top
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": {"platform": platform.platform(),
                  "processor": platform.processor(),
                  "cpu_count": os.cpu_count(),
                  "jax_backend": jax.default_backend(),
                  "devices": [str(d) for d in jax.devices()],
                  # Other processes' load, 1/5/15-minute averages: the
                  # figures are only comparable within one run.
                  "load_average_start": load_at_start,
                  "load_average_end": os.getloadavg()},
      "versions": {"jax": jax.__version__, "numpy": np.__version__,
                   "sklearn": sk.__version__},
      "settings": {"quick": quick, "repeats": repeats, "steps": steps,
                   "batch": BATCH, "sklearn_examples": sklearn_examples,
                   "dtype": "float32"},
      "matmul_ceiling": ceiling, "sklearn": sklearn, "training": train,
      "components": components, "routing": routing, "ais": ais,
      "table": _table(ceiling, sklearn, train, components, routing, ais),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  if f.platform:
    jax.config.update("jax_platforms", f.platform)
  result = run(f.quick, f.repeats, f.steps, f.sklearn_examples)
  print(result["table"])
  with open(f.out, "w") as out:
    json.dump(result, out, indent=1)
  print(f"\nwrote {f.out}")


def _define_flags():
  # Defined only when run as a program: tests import this module beside
  # mains that define flags of the same names (bars_and_stripes: --steps).
  flags.DEFINE_string("out", "bench.json", "Where to write the JSON.")
  flags.DEFINE_enum("platform", None, ["cpu", "gpu", "tpu"],
                    "JAX platform to run on (default: JAX's choice). "
                    "scikit-learn always runs on the CPU.")
  flags.DEFINE_bool(
      "quick", False,
      "Smoke run: tiny sizes, few repeats (numbers meaningless).")
  flags.DEFINE_integer("repeats", 5, "Timed repeats per case.")
  flags.DEFINE_integer("steps", 20,
                       "Training steps (batches) per timed repeat.")
  flags.DEFINE_integer("sklearn_examples", 5000,
                       "Examples per timed scikit-learn epoch.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
