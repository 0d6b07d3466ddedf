r"""Draws the routing of one image through a trained layer (the paper's
Figure 1).

  python -m experiments.routing_diagram --workdir=runs/diagram_r3 --index=0 \
      --out=docs/images/routing_diagram_test0.png [--split=test] [--seed=0]

Loads the config recorded in the workdir and its latest checkpoint, takes
image `--index` of `--split`, makes its visible capsules exactly as training
does (`visible.to_capsules`: for the pixel-patch front end, a stochastic
binarization drawn with `--seed`, cut into patches; the model never sees
grey levels), routes them with the config's routing (`num_iterations`,
`routing_temperature`; `capsjax.route`) and writes a PNG:

- left: the grey input image (ink on white), with the patch grid;
- middle: the lower capsules on a square-ish grid (for patches, the image's
  patch grid), each box shaded by the capsule's activation, the mean of its
  visible neuron values (for binary pixels, the fraction of pixels on),
  and for the patch front end the binarized patch itself drawn inside;
- right: one row per upper capsule j: a box shaded by its activation, the
  mean over its neurons of p(h_jk = 1 | v; c) (docs/model.md section 3: the
  routing-weighted input s_j = sum_i c_ij W_ij v_i through the hidden
  biases), then a map of c_ij over the lower grid (where capsule j takes its
  input from), then three numbers: mean p(h = 1), the squash length |o_j|
  and sum_i c_ij (how many lower capsules' worth of input it receives);
- edges from lower capsule i to upper capsule j with opacity c_ij (drawn
  weakest first, so the strong ones lie on top; those with c_ij >= 0.5
  start at a dot and are drawn over the lower boxes, the rest under them);
- a caption: the step, r, the mean routing entropy in nats (log Nh when
  routing is uniform, 0 when every lower capsule picks one upper capsule)
  and the mean of max_j c_ij, over all lower capsules and over the non-zero
  ones (an all-zero capsule votes 0 for every upper capsule, so its
  coefficients stay uniform whatever the weights).

The boxes are shaded by the mean hidden probability rather than by the
squash length |o_j| because that is what the energy model uses (the upper
capsule's neurons are experts fed by s_j); |o_j| is the routing's own
notion of presence and only enters through the coefficients, so it is
printed beside it.

Everything darker means "more": more pixels on, higher probability, larger
c_ij. `runner.diagram.drawing.draw_routing` (arrays in, an RGB uint8 array
out) is the reusable drawing, `layout` its geometry;
`runner.diagram.figure.routing_figure` computes its inputs from a config and
parameters; `run` is the command.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
import jax

from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import metrics
from experiments.runner.diagram import figure as figure_lib


@harness.exit_on_error(ValueError)
def run(workdir: str, index: int, out: str, *, split: str = "test",
        seed: int = 0) -> None:
  """The command: writes the diagram of image `index` of `split` to `out`.

  Errors (no workdir or checkpoint, a missing dataset, an index out of
  range, an unwritable `out`) exit with a one-line message.
  """
  config, state = front_ends.load_run(workdir)
  front_end = front_ends.get(config)
  d = data_io.load_data(config)
  grey, label = figure_lib.select_image(d, split, index)
  step = int(state.step)
  title = (f"{config.dataset} {split} image {index} (label {label}), "
           f"routed by {workdir}")
  figure = figure_lib.routing_figure(
      config, front_end, factories.model_params(config, state), grey,
      jax.random.key(seed), title=title, step=step)
  try:
    figure_lib.save_png(out, figure)
  except OSError as e:
    raise SystemExit(f"error: cannot write {out}: {e}") from None
  logging.info("Step %d: wrote %s", step, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_orbax_logging()
  f = flags.FLAGS
  run(f.workdir, f.index, f.out, split=f.split, seed=f.seed)
  print(f.out)


def _define_flags():
  # Defined only when run as a program: the tests import this module beside
  # other mains (bars_and_stripes) that define flags of the same names.
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_integer("index", None, "Which image of the split.",
                       required=True)
  flags.DEFINE_enum("split", "test", ["test", "train"],
                    "The split the image comes from.")
  flags.DEFINE_string("out", None, "The PNG to write.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the binarization.")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=harness.parse_flags)
