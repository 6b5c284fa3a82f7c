"""The two kinds of error a script reports in one line instead of a traceback (hrm_jax.cli).

A `UserError` is a mistake in what the user gave: a flag or its value, a config key, a file,
a line of data. A `RunError` is a run that cannot go on for a reason outside the code (a
non-finite loss, a failed save, a workdir in use). Anything else reaching a script's top is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """A bad flag, value, config key, file or data line; the message names it."""


class ConfigError(UserError, ValueError):
  """A training config value that cannot work (checked before any work is done)."""


class RunError(Exception):
  """The run stopped for a reason that is not a bug; the message says what is kept."""
