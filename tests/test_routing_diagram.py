"""experiments/routing_diagram.py: the drawing, routed inputs, the runner."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from experiments import routing_diagram as rd
from experiments.configs import default
from experiments.runner import checkpoints
from experiments.runner import data as data_io
from experiments.runner import factories
from experiments.runner import front_ends
from experiments.runner import harness
from experiments.runner import state as state_lib
from experiments.runner.diagram import drawing
from experiments.runner.diagram import figure as figure_lib
from tests import reference

REPO = pathlib.Path(__file__).resolve().parents[1]


def darkness(figure, points):
  """Mean of 255 - the mean RGB value at integer (x, y) points."""
  xs, ys = np.round(np.asarray(points)).astype(int).T
  return float(np.mean(255.0 - figure[ys, xs].mean(axis=-1)))


def edge_points(geo, i, j, lo=0.35, hi=0.65, n=40):
  """Points on the middle part of the straight edge i -> j (where it is
  clear of the boxes and of the other edges' common end points)."""
  (x0, y0), (x1, y1) = geo.lower_anchor(i), geo.upper_anchor(j)
  t = np.linspace(lo, hi, n)[:, None]
  return np.concatenate([x0 + t * (x1 - x0), y0 + t * (y1 - y0)], axis=1)


class TestDrawRouting:

  def test_shape_dtype_and_layout(self):
    nv, nh = 9, 4
    figure = drawing.draw_routing(np.zeros((28, 28)), np.zeros(nv),
                                  np.zeros(nh), np.full((nv, nh), 1 / nh),
                                  caption=["a", "b"])
    geo = drawing.layout(nv, nh, caption_lines=2)
    assert figure.dtype == np.uint8
    assert figure.shape == (geo.size[1], geo.size[0], 3)
    assert geo.grid == (3, 3)
    # Boxes do not overlap and lie inside the canvas.
    boxes = np.concatenate([geo.lower_boxes, geo.upper_boxes, geo.map_boxes])
    assert (boxes[:, :2] >= 0).all()
    assert ((boxes[:, 2] < geo.size[0]).all()
            and (boxes[:, 3] < geo.size[1]).all())
    for k, a in enumerate(boxes):
      for b in boxes[k + 1:]:
        assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]

  @pytest.mark.parametrize("nv, nh", [(49, 16), (144, 10), (5, 3)])
  def test_grid_holds_every_lower_capsule(self, nv, nh):
    rows, cols = drawing.grid_shape(nv)
    assert rows * cols >= nv and (rows - 1) * cols < nv
    assert abs(rows - cols) <= 1
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh),
                             np.full((nv, nh), 1 / nh))
    assert figure.shape[2] == 3

  def test_the_hard_routed_edge_is_darkest(self):
    nv, nh = 9, 4
    c = np.full((nv, nh), 1 / nh)
    c[4] = [0, 0, 1, 0]   # the centre capsule goes entirely to upper 2
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh), c)
    geo = drawing.layout(nv, nh)
    strong = darkness(figure, edge_points(geo, 4, 2))
    # Drawn at full opacity: the pixels are the edge colour itself.
    xs, ys = np.round(edge_points(geo, 4, 2)).astype(int).T
    assert np.mean(np.all(figure[ys, xs] == drawing.EDGE, axis=-1)) > 0.9
    for i, j in [(4, 0), (4, 1), (4, 3), (0, 2), (8, 2), (2, 1)]:
      assert darkness(figure, edge_points(geo, i, j)) < 0.5 * strong, (i, j)

  def test_strong_edges_start_at_a_dot_over_the_box(self):
    nv, nh = 4, 2
    c = np.array([[1.0, 0.0], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh), c)
    geo = drawing.layout(nv, nh)
    def centre(i):
      x, y = geo.lower_anchor(i)
      return tuple(figure[int(y), int(x)])
    assert centre(0) == drawing.EDGE      # c = 1: drawn over the box
    assert centre(1) == drawing.EDGE      # max c = 0.6 >= 0.5
    assert centre(3) == drawing.EDGE
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh),
                             np.full((nv, nh), 0.49))
    assert tuple(figure[int(geo.lower_anchor(0)[1]),
                        int(geo.lower_anchor(0)[0])]) == drawing.WHITE

  def test_edge_darkness_grows_with_the_coefficient(self):
    nv, nh = 4, 2
    values = [0.1, 0.4, 0.7, 1.0]
    c = np.array([[v, 1 - v] for v in values])
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh), c)
    geo = drawing.layout(nv, nh)
    d = [darkness(figure, edge_points(geo, i, 0)) for i in range(nv)]
    assert np.all(np.diff(d) > 0), d

  def test_box_shading_is_monotone_in_activation(self):
    nv, nh = 16, 5
    lower, upper = np.linspace(0, 1, nv), np.linspace(0, 1, nh)
    figure = drawing.draw_routing(None, lower, upper, np.full((nv, nh), 1 / nh))
    geo = drawing.layout(nv, nh)
    def grey(box):  # a pixel inside the box, clear of its outline and label
      x0, y0, x1, y1 = box
      return figure[y0 + 2, x0 + 2].astype(int)
    for boxes in (geo.lower_boxes, geo.upper_boxes):
      g = np.array([grey(b) for b in boxes])
      assert (g[:, 0] == g[:, 1]).all() and (g[:, 1] == g[:, 2]).all()  # grey
      assert g[0, 0] == 255 and g[-1, 0] == 0
      assert np.all(np.diff(g[:, 0]) < 0), g[:, 0]

  def test_patches_are_drawn_inside_the_lower_boxes(self):
    nv, nh = 4, 3
    patches = np.zeros((nv, 7, 7))
    patches[1] = 1.0                     # all on: black inset
    lower = np.full(nv, 0.5)
    # Weak edges (c < 0.5) pass under the boxes.
    figure = drawing.draw_routing(None, lower, np.zeros(nh),
                             np.full((nv, nh), 1 / nh), patches=patches)
    geo = drawing.layout(nv, nh)
    centre = [figure[(y0 + y1) // 2, (x0 + x1) // 2]
              for x0, y0, x1, y1 in geo.lower_boxes]
    np.testing.assert_array_equal(centre[1], [0, 0, 0])
    np.testing.assert_array_equal(centre[0], [255, 255, 255])

  def test_coefficient_map_shows_c(self):
    nv, nh = 9, 3
    c = np.zeros((nv, nh))
    c[:, 0] = 1.0
    c[5] = [0, 1, 0]
    figure = drawing.draw_routing(None, np.zeros(nv), np.zeros(nh), c)
    geo = drawing.layout(nv, nh)
    m = geo.map_cell
    def cell(j, i):
      x0, y0 = geo.map_boxes[j][:2]
      r, q = divmod(i, geo.grid[1])
      return tuple(figure[y0 + r * m + m // 2, x0 + q * m + m // 2])
    assert cell(1, 5) == drawing.EDGE and cell(0, 5) == drawing.WHITE
    assert cell(0, 4) == drawing.EDGE and cell(1, 4) == drawing.WHITE

  def test_bad_shapes_are_rejected(self):
    with pytest.raises(ValueError, match="lower_activation"):
      drawing.draw_routing(None, np.zeros(3), np.zeros(2), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="patches"):
      drawing.draw_routing(None, np.zeros(4), np.zeros(2), np.zeros((4, 2)),
                      patches=np.zeros((3, 2, 2)))


def tiny_config(**overrides):
  config = default.get_config()
  config.patch_size = 7          # 16 capsules of 49 pixels
  config.num_hidden_capsules = 3
  config.hidden_dim = 4
  config.num_iterations = 3
  config.binarize = "threshold"  # deterministic visible capsules
  config.batch_size = 10
  config.update(overrides)
  return config


def test_route_image_matches_the_numpy_reference():
  config = tiny_config()
  rng = np.random.default_rng(0)
  nv, dv, nh, dh = state_lib.shapes(config, front_ends.get(config))
  params = {"W": rng.normal(0, 0.3, (nv, nh, dh, dv)).astype(np.float32),
            "a": np.zeros((nv, dv), np.float32),
            "b": rng.normal(0, 1, (nh, dh)).astype(np.float32)}
  grey = np.zeros((28, 28), np.float32)
  grey[7:21, 3:25] = rng.random((14, 22))
  routed = figure_lib.route_image(config, front_ends.get(config), params,
                                  grey, jax.random.key(0))
  # Visible capsules: thresholded 7x7 patches in row-major order.
  v = np.stack([(grey[r:r + 7, q:q + 7] > 0.5).ravel()
                for r in range(0, 28, 7) for q in range(0, 28, 7)]
               ).astype(np.float64)
  np.testing.assert_array_equal(routed.visible, v)
  u = reference.predictions(params["W"].astype(np.float64), v)
  c = reference.route(u, 3)
  np.testing.assert_allclose(routed.coefficients, c, atol=1e-4)
  s = np.einsum("ij,ijk->jk", c, u)
  np.testing.assert_allclose(routed.hidden_probs,
                             1 / (1 + np.exp(-(params["b"] + s))), atol=1e-4)
  np.testing.assert_allclose(
      routed.lengths, [np.linalg.norm(reference.squash(x)) for x in s],
      atol=1e-4)
  # The all-zero capsules (rows 0 and 3 of the patch grid) vote 0: uniform.
  blank = ~v.any(axis=1)
  assert blank.sum() == 8
  np.testing.assert_allclose(routed.coefficients[blank], 1 / nh, atol=1e-6)
  figure = figure_lib.routing_figure(config, front_ends.get(config), params,
                                     grey, jax.random.key(0))
  assert figure.shape == (drawing.layout(nv, nh, grid=(4, 4), caption_lines=4)
                          .size[::-1] + (3,))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir holding an untrained checkpoint (no training: it is cheap),
  its dataset prepared."""
  path = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir=str(tmp_path_factory.mktemp("tfds")))
  harness.make_workdir(path)
  checkpoints.check_workdir_config(config, path)
  state = state_lib.initial_state(config, front_ends.get(config),
                                  np.zeros((10, 28, 28), np.float32),
                                  factories.make_optimizer(config))
  mngr = harness.checkpoint_manager(config, path)
  harness.save_checkpoint(mngr, 0, state)
  harness.finish_checkpoints(mngr)
  mngr.close()
  data_io.load_data(config)
  return path


@pytest.mark.slow
def test_command_writes_a_png(workdir, tmp_path):
  """The command line, end to end."""
  out = tmp_path / "diagram.png"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.routing_diagram",
       f"--workdir={workdir}", "--index=3", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == str(out)
  with Image.open(out) as im:
    im.load()
    size = im.size
  assert size == drawing.layout(16, 3, grid=(4, 4), caption_lines=4).size


def test_run_draws_the_routed_test_image(workdir, tmp_path):
  out = tmp_path / "diagram.png"
  rd.run(workdir, 3, str(out), seed=1)
  config, state = front_ends.load_run(workdir)
  grey = data_io.load_data(config).test[3]
  expected = figure_lib.routing_figure(config, front_ends.get(config),
                                       state.params, grey, jax.random.key(1),
                               step=int(state.step))
  with Image.open(out) as im:
    written = np.asarray(im.convert("RGB"))
  assert written.shape == expected.shape
  # The same picture apart from the title (the 256-colour palette is exact
  # away from the legend's gradients).
  body = slice(40, None)
  assert np.mean(np.all(written[body] == expected[body], axis=-1)) > 0.99


def test_runner_rejects_an_out_of_range_index(workdir, tmp_path):
  out = tmp_path / "x.png"
  with pytest.raises(SystemExit, match=r"^error: --index=1000 is out of "
                     r"range: the test split has 1000 images \(0 to 999\)$"):
    rd.run(workdir, 1000, str(out))
  assert not out.exists()


def test_select_image():
  grey = np.arange(3 * 28 * 28, dtype=np.float32).reshape(3, 28, 28)
  d = data_io.Data(grey[:2], np.array([4, 5]), grey, np.array([7, 8, 9]))
  image, label = figure_lib.select_image(d, "test", 2)
  np.testing.assert_array_equal(image, grey[2])
  assert label == 9
  assert figure_lib.select_image(d, "train", 1)[1] == 5
  with pytest.raises(ValueError, match=r"--index=-1 is out of range: the "
                     r"test split has 3 images \(0 to 2\)"):
    figure_lib.select_image(d, "test", -1)
  with pytest.raises(ValueError, match=r"--index=2 .* train split has 2"):
    figure_lib.select_image(d, "train", 2)


def test_runner_rejects_a_workdir_without_checkpoint(tmp_path):
  with pytest.raises(SystemExit, match="^error: .* holds no config.json"):
    rd.run(str(tmp_path), 0, str(tmp_path / "x.png"))
