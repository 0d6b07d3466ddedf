"""Reports: eval.json and eval.md (a markdown table with settings, run and
timing notes), and the AIS reliability table."""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.runner.evaluation import likelihood

# Fields of the config that name the run in the markdown header (the JSON
# keeps the whole config).
RUN_FIELDS = ("baseline", "dataset", "front_end", "autoencoder_workdir",
              "lower_workdir", "binarize", "patch_size",
              "num_hidden_capsules", "hidden_dim", "num_iterations", "k",
              "persistent", "mh", "reroute", "through_routing", "optimizer",
              "learning_rate", "num_steps", "seed")


# What the report says when no classifier was given.
# What the report says when the visible units are not pixels.
NOT_PIXEL_SPACE = (
    "not defined in pixel space: the visible units are not pixels (the "
    "autoencoder's decoder is deterministic, so the PoE defines no "
    "distribution over images; a stacked layer's pixel likelihood is a "
    "deep belief net's, only a bound); evaluate the bottom layer's workdir "
    "for its pixel log-likelihood")


FRECHET_HINT = ("pass --classifier_workdir=DIR, a classifier trained with "
                "`python -m experiments.train_classifier --workdir=DIR`")


def _log_likelihood_cell(ll: dict) -> str:
  if not ll.get("computed", True):
    return ll["note"]
  if not ll["reliable"]:
    return f"degenerate (ESS {ll['ess']:.1f})"
  err = float(np.hypot(ll["test_log_prob_sem"], ll["log_z_std"]))
  return f"{ll['test_log_prob_mean']:.2f} ± {err:.2f}"


def _log_z_cell(ll: dict, num_runs: int) -> str:
  if not ll.get("computed", True):
    return "not computed"
  diagnostics = (f"ESS {ll['ess']:.1f} of {num_runs}, acceptance "
                 f"{ll['acceptance_rate']:.3f}")
  if not ll["reliable"]:
    return f"withheld ({diagnostics}; the number is in eval.json)"
  return f"{ll['log_z']:.2f} ± {ll['log_z_std']:.2f} ({diagnostics})"


def _reverse_ais_cell(rev: dict, forward_reliable: bool) -> str:
  if not rev.get("computed"):
    return "not computed (" + rev.get("note", "") + ")"
  cell = (f"{rev['test_log_prob_mean']:.2f} ± {rev['test_log_prob_sem']:.2f} "
          f"on {rev['num_examples']} test examples")
  if not forward_reliable:  # a degenerate forward estimate is not printed
    return cell + " (forward AIS degenerate: not compared)"
  cell += (f" (forward AIS on the same examples: "
           f"{rev['forward_test_log_prob_mean']:.2f})")
  if rev["disagree"]:
    cell += (f" **WARNING: forward and reverse differ by "
             f"{rev['forward_minus_reverse']:.2f} nats (> "
             f"{rev['tolerance_nats']:.0f}): forward AIS is not to be "
             "trusted**")
  return cell


def _frechet_cell(fd: dict | None) -> str:
  if not fd or not fd.get("computed"):
    return "not computed (" + (fd or {}).get("note", FRECHET_HINT) + ")"
  if "floor_front_end" in fd:
    return (f"{fd['distance']:.2f} (floors: grey train vs test "
            f"{fd['floor_train_vs_test']:.2f}; decoded binarized train "
            f"capsules vs test {fd['floor_front_end']:.2f})")
  return (f"{fd['distance']:.2f} (floor, binarized train vs test: "
          f"{fd['floor_train_vs_test']:.2f})")


def _diversity_cell(fd: dict | None) -> str:
  if not fd or not fd.get("computed") or "diversity" not in fd:
    return "not computed (needs the Fréchet classifier: " + FRECHET_HINT + ")"
  d = fd["diversity"]
  if not d.get("computed"):
    return "not computed (" + d["note"] + ")"
  return (f"entropy {d['entropy_nats']:.3f} nats (uniform "
          f"{d['max_entropy_nats']:.3f}), {d['classes_above_threshold']} "
          f"classes above {100 * d['threshold']:.0f}%; histogram "
          f"{d['class_histogram']}")


def _routing_cell(routing: dict | None) -> str:
  if not routing or not routing.get("computed"):
    return (routing or {}).get("note", "not computed")
  return (f"parse fraction {routing['parse_fraction']:.3f} of "
          f"{routing['num_qualifying']} capsules; class information "
          f"{routing['class_information_nats']:.3f} nats; entropy "
          f"{routing['entropy_nats']:.3f} nats ({routing['num_examples']} "
          "test digits)")


def _frechet_notes(fd: dict | None) -> list[str]:
  if not fd or not fd.get("computed"):
    return []
  clf = fd["classifier"]
  accuracy = clf.get("test_accuracy")
  accuracy = "" if accuracy is None else f", test accuracy {accuracy:.4f}"
  mh = ", MH-corrected" if fd["mh"] else ""
  if "floor_front_end" in fd:
    return [
        f"Fréchet distance: {fd['num_samples']} model samples "
        f"({fd['samples']}; {fd['sample_steps']} Gibbs steps{mh}); floors: "
        f"{fd['num_floor_train_examples']} grey training images, and the "
        "same images' binarized visible capsules decoded; each against the "
        f"{fd['num_test_examples']} grey test images; features of the "
        f"{clf['num_features']}-unit penultimate layer of the classifier in "
        f"{clf['workdir']} (trained on {clf['dataset']}{accuracy}).", ""]
  return [
      f"Fréchet distance: {fd['num_samples']} model samples ({fd['samples']}; "
      f"{fd['sample_steps']} Gibbs steps{mh}) and, for the floor, "
      f"{fd['num_floor_train_examples']} binarized training images, each "
      f"against the {fd['num_test_examples']} binarized test images; features "
      f"of the {clf['num_features']}-unit penultimate layer of the classifier "
      f"in {clf['workdir']} (trained on {clf['dataset']}{accuracy}).", ""]


def to_markdown(results: dict, title: str = "Evaluation") -> str:
  """The results as a markdown table, with settings, run and timing notes."""
  ll, s, cfg = results["log_likelihood"], results["settings"], results["config"]
  rows = [
      ("test log-likelihood (nats)", _log_likelihood_cell(ll)),
      ("AIS log Z", _log_z_cell(ll, s["num_runs"])),
      *([("reverse AIS test log-likelihood (nats; conservative)",
          _reverse_ais_cell(ll["reverse_ais"], ll["reliable"]))]
        if "reverse_ais" in ll else []),
      ("test reconstruction error (per-pixel MSE)"
       if ll.get("computed", True) else
       "test reconstruction error (MSE per visible unit: "
       + results["settings"].get("visible_units", "?") + ")",
       f"{results['reconstruction_error']:.4f}"),
      ("linear probe test accuracy",
       f"{results['linear_probe_accuracy']:.4f} "
       f"({s['probe_train_examples']} train examples)"),
      (f"k-means clustering accuracy ({s['num_clusters']} clusters, Hungarian)",
       f"{results['clustering_accuracy']:.4f}"),
      ("routing (parses the digits when the parse fraction is high; 0 = "
       "a fixed partition)", _routing_cell(results.get("routing"))),
      ("Fréchet distance, samples vs test (classifier features)",
       _frechet_cell(results.get("frechet"))),
      ("sample diversity (classifier's classes of the Fréchet samples)",
       _diversity_cell(results.get("frechet"))),
  ]
  run = ", ".join(f"{k}={cfg[k]}" for k in RUN_FIELDS if k in cfg)
  times = ", ".join(f"{k} {v:.1f} s" for k, v in results["wall_time_s"].items())
  plat = results["platform"]
  lines = [
      f"# {title} (step {results['step']})", "",
      "| measure | value |", "| --- | --- |",
      *(f"| {name} | {value} |" for name, value in rows), "",
      f"Test set: {results['num_test_examples']} examples, binarized once "
      f"(seed {s['seed']}). The log-likelihood's ± combines the spread over "
      "test examples and log Z's delta-method error.", "",
      f"AIS: {s['ais']}, {s['num_betas']} betas x {s['num_runs']} runs, "
      f"{s['beta_schedule']} schedule, base model: {s['base_model']}; "
      f"flagged degenerate below ESS {s['min_ess']:.1f}.", "",
      *([f"Reverse AIS (RAISE, Burda et al. 2015): one chain per example on "
         f"a seeded random subset of {ll['reverse_ais']['num_examples']} "
         f"test examples, {ll['reverse_ais']['num_betas']} betas, the same "
         "base model and schedule; ± is the standard error over examples. "
         "It is biased low, forward AIS tends high: a gap over "
         f"{ll['reverse_ais']['tolerance_nats']:.0f} nats is flagged.", ""]
        if ll.get("reverse_ais", {}).get("computed") else []),
      *_frechet_notes(results.get("frechet")),
      f"Run: {run}.", "",
      f"Wall time: {times}.", "",
      f"Device: {plat['jax_backend']} ({', '.join(plat['devices'])}), "
      f"jax {plat['jax_version']}.", "",
  ]
  return "\n".join(lines)


def write(results: dict, out_dir: str, title: str = "Evaluation"
          ) -> tuple[str, str]:
  """Writes eval.json and eval.md under `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "eval.json")
  md_path = os.path.join(out_dir, "eval.md")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  with open(md_path, "w") as f:
    f.write(to_markdown(results, title))
  return json_path, md_path


def ais_markdown(rows: list[dict], title: str) -> str:
  lines = [f"# {title}", "",
           "| schedule | betas | seeds reliable | test log p (nats), mean ± "
           "spread over reliable seeds | 95% upper bound | min ESS | "
           "MH acceptance |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for s in likelihood.ais_summary(rows):
    if s["test_log_prob_mean"] is None:
      ll = "degenerate: not quoted"
    elif s["test_log_prob_spread"] is None:
      ll = f"{s['test_log_prob_mean']:.2f} (one reliable seed)"
    else:
      ll = f"{s['test_log_prob_mean']:.2f} ± {s['test_log_prob_spread']:.2f}"
    lines.append(f"| {s['schedule']} | {s['num_betas']} | "
                 f"{s['reliable_seeds']} / {s['seeds']} | {ll} | "
                 f"<= {s['upper_bound_95']:.1f} | {s['min_ess']:.1f} | "
                 f"{s['acceptance_rate']:.3f} |")
  return "\n".join(lines) + "\n"
