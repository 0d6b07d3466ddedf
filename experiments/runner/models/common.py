"""What the autoencoder and the classifier share: the fields of their
configs, checked, and their optimizer."""

from __future__ import annotations

import optax

from capsjax import data as data_lib


def validate_network(config, error: type[Exception], *,
                     int_fields=("batch_size", "num_steps"),
                     fraction_field: str) -> None:
  """The dataset, positive integers `int_fields`, two positive
  conv_features, the fraction in [0, 1] and a positive learning rate."""
  if config.dataset not in data_lib.DATASETS:
    raise error(f"config.dataset = {config.dataset!r}: unknown; "
                f"known: {', '.join(data_lib.DATASETS)}")
  for field in int_fields:
    if not isinstance(config[field], int) or config[field] < 1:
      raise error(f"config.{field} = {config[field]!r}: must be an "
                  "integer >= 1")
  if len(config.conv_features) != 2 or min(config.conv_features) < 1:
    raise error(f"config.conv_features = {config.conv_features!r}: "
                "two positive channel counts")
  if not 0 <= config[fraction_field] <= 1:
    raise error(f"config.{fraction_field} = "
                f"{config[fraction_field]!r}: must be in [0, 1]")
  if not config.learning_rate > 0:
    raise error(f"config.learning_rate = {config.learning_rate!r}: "
                "must be > 0")


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam, its learning rate cosine-decayed to 0 over config.num_steps."""
  schedule = optax.cosine_decay_schedule(config.learning_rate,
                                         config.num_steps)
  return optax.adam(schedule)
