"""A training config's values checked before any work: each bad one named by its flag.

The counts and cadences below reach modulo and range arithmetic deep in the loop, where a
zero is a ZeroDivisionError minutes in or, for `checkpoint.keep`, a run that keeps nothing.
Cadences follow one rule: `checkpoint.every_steps` and `checkpoint.every_epochs` are 0 for
off; the log and held-out cadences must be >= 1 (a run always logs its last step).
"""

from __future__ import annotations

import ml_collections

from hrm_jax import errors

# (key, lowest allowed value, what the value means)
_BOUNDS = (
    ("train.epochs", 1, "epochs of data to train on"),
    ("train.total_steps", 0, "0 = from the data's epochs"),
    ("train.max_steps", -1, "-1 = run to total_steps"),
    ("train.microbatches", 1, "microbatches per step"),
    ("train.warmup_steps", 0, "learning-rate warm-up steps"),
    ("data.rows", 1, "rows per global batch"),
    ("data.row_len", 1, "tokens per row"),
    ("checkpoint.keep", 1, "newest checkpoints kept"),
    ("checkpoint.every_steps", 0, "0 = no step checkpoints"),
    ("checkpoint.every_epochs", 0, "0 = no epoch checkpoints"),
    ("log.every_steps", 1, "steps per progress line and metrics row"),
    ("eval_data.every_steps", 1, "steps per held-out evaluation"),
    ("eval_data.max_batches", 0, "0 = the whole first epoch"),
    ("profile.steps", 0, "0 = no profile"),
)


def check(cfg: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first value out of range, or of a pair that cannot go together."""
  for key, low, meaning in _BOUNDS:
    section, field = key.split(".")
    if section not in cfg or field not in cfg[section]:
      continue
    value = cfg[section][field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise errors.ConfigError(f"--config.{key}={value!r}: expected an integer >= {low} "
                               f"({meaning})")
  if cfg.data.rows % cfg.train.microbatches:
    raise errors.ConfigError(f"--config.train.microbatches={cfg.train.microbatches} does not "
                             f"divide --config.data.rows={cfg.data.rows}")
  if cfg.data.source == "demo" and cfg.data.path:
    raise errors.ConfigError(f"--config.data.path={cfg.data.path} is set but this config "
                             "trains on the embedded demo data (data.source='demo'); add "
                             "--config.data.source=path to train on it")
