r"""Front ends: where a capsule layer's visible capsules come from
(docs/model.md section 8), built from a config (`get`), and reading a
trained workdir (`load_run`).

  config.front_end = "patches"      (default) pixel patches of
                                    config.patch_size^2 pixels;
  config.front_end = "autoencoder"  the 144 x code_dim sigmoid code of the
                                    autoencoder in config.autoencoder_workdir
                                    (python -m experiments.train_autoencoder);
  config.front_end = "layer"        the hidden probabilities p(h | v; c(v)) of
                                    the trained capsule layer in
                                    config.lower_workdir, as its Nh capsules
                                    of Dh: greedy stacking (a deep belief net
                                    of capsule layers).

`get(config)` returns a `visible.FrontEnd`. A stacked layer's front end
loads the run below with `load_run`, which builds that run's own front end
with `get`: stacks of any depth build by recursion within this module,
down to a patches or autoencoder front end.

The decode of a stacked layer goes through the lower layer top-down:
`capsjax.topdown_means` with `config.topdown_iterations` mean-field rounds.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections

import capsjax
from experiments.runner import checkpoints
from experiments.runner import config as config_lib
from experiments.runner import factories
from experiments.runner import harness
from experiments.runner import visible
from experiments.runner.errors import ConfigError
from experiments.runner.models import autoencoder as autoencoder_lib

KINDS = config_lib.FRONT_END_KINDS


def get(config) -> visible.FrontEnd:
  """The config's front end (loaded once per workdir and checkpoint)."""
  config_lib.validate_front_end(config)
  kind = config.get("front_end", "patches")
  if kind == "patches":
    return visible.patches(config.patch_size)
  if kind == "autoencoder":
    path = os.path.abspath(config.autoencoder_workdir)
    return _autoencoder(path, _latest_step(path))
  path = os.path.abspath(config.lower_workdir)
  return _layer(path, _latest_step(path), config.get("topdown_iterations", 3))


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict,
                                    capsjax.TrainState]:
  """(config, state) of a workdir's latest checkpoint, for readers (its
  front end: `get(config)`, cached).

  Raises ConfigError when the workdir has no config.json or no checkpoint,
  or its config is one the runner would reject.
  """
  try:
    config = config_lib.load_config(workdir)
  except FileNotFoundError:
    raise ConfigError(f"{workdir} holds no config.json: is it a training "
                      "workdir?") from None
  config_lib.validate_config(config)
  mngr = harness.checkpoint_manager(config, workdir, create=False)
  try:
    state = None
    if mngr.latest_step() is not None:  # the front end only for a restore
      state = checkpoints.restore_latest(config, get(config), workdir, mngr)
  finally:
    mngr.close()
  if state is None:
    raise ConfigError(f"no checkpoint in {workdir}")
  return config, state


def _config_error(field, value, why):
  return ConfigError(f"config.{field} = {value!r}: {why}")


def _latest_step(workdir: str):
  """A cache key that changes when the workdir gets a new checkpoint."""
  try:
    return max((int(d) for d in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if d.isdigit()), default=None)
  except FileNotFoundError:
    return None


@functools.lru_cache(maxsize=8)
def _autoencoder(workdir: str, step) -> visible.FrontEnd:
  try:
    ae = autoencoder_lib.load(workdir)
  except autoencoder_lib.AutoencoderError as e:
    raise _config_error("autoencoder_workdir", workdir, str(e)) from None
  del step  # only a cache key
  shape = (ae.config.num_capsules, ae.config.code_dim)
  return visible.FrontEnd(
      kind="autoencoder", shape=shape, means=ae.encode,
      sample=visible.binarized_means(ae.encode), decode=ae.decode,
      pixel_space=False,
      description=(f"autoencoder codes ({shape[0]} capsules of {shape[1]}; "
                   f"{workdir}, step {ae.step})"))


@functools.lru_cache(maxsize=8)
def _layer(workdir: str, step, rounds: int) -> visible.FrontEnd:
  del step  # only a cache key
  try:
    lower_config, state = load_run(workdir)  # recursion: its own front end
  except ConfigError as e:
    raise _config_error("lower_workdir", workdir, str(e)) from None
  lower = get(lower_config)
  params = jax.device_get(factories.model_params(lower_config, state))
  routing = factories.make_routing(lower_config)
  nh, dh = params["b"].shape

  def means(grey):
    m = lower.means(grey)
    return capsjax.hidden_probs(params, m,
                                capsjax.route_visible(params, m, routing))

  def decode(h):
    return lower.decode(capsjax.topdown_means(params, h, routing, rounds))

  return visible.FrontEnd(
      kind="layer", shape=(nh, dh), means=means,
      sample=visible.binarized_means(means), decode=decode, pixel_space=False,
      description=(f"hidden probabilities of the layer in {workdir} (step "
                   f"{int(state.step)}, r = {routing.num_iterations}; "
                   f"{lower.description})"))
