"""Every experiment config loads and passes validation."""

import importlib
import pathlib

import pytest

from experiments.runner import config as config_lib

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1]
                                  / "experiments" / "configs").glob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documented(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  assert "python -m experiments.train" in module.__doc__
  # Each config states its result (measured) or what to expect.
  assert "Expected" in module.__doc__ or "Measured" in module.__doc__
  config_lib.validate_config(module.get_config())


def test_all_configs_found():
  assert {"default", "mnist", "mnist_norouting",
          "fashion_mnist"} <= set(CONFIGS)
