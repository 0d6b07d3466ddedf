"""The runner's error types: each ends a command with a one-line message
(`harness.exit_on_error`), not a traceback."""


class ConfigError(ValueError):
  """A config value, or a workdir, that cannot be used."""


class DataError(ValueError):
  """Data that cannot be trained on (checked before training starts)."""


class DivergenceError(RuntimeError):
  """Training produced a non-finite parameter or statistic."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or none can be read."""


class LockError(RuntimeError):
  """The workdir has another writer (runner/lock.py)."""
