"""Warm start (`init_from`): a new run's first state from another run's checkpoint, the two
ways the reference's SFT stage resumes a pretraining run (docs/warm_start.md).

- `full_state` (the reference's default, weights_only_resume_from_ema false): params,
  optimizer moments and Adam's step count, EMA and buffers from the source. The new run's own
  step counter starts at 0, so its lr schedule, bp_steps warm-up and data start from the
  beginning (the reference keeps its step outside the checkpoint); Adam's bias correction
  continues from the source's count. b1, b2, weight decay, EMA decay and the schedule are
  the new config's.
- `ema_weights` (weights_only_resume_from_ema true): params = the source's EMA (or its
  params with use_ema false), EMA = a copy of them, buffers from the source, a fresh optimizer.

The source's optimizer count is recorded in the new run's checkpoints (`warm_start` in the
config item), so a resumed run keeps its lr schedule without reading the source again.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from hrm_jax import checkpoint_layout, errors
from hrm_jax.config import ModelConfig
from hrm_jax.train import run_checkpoints as ckpt_lib
from hrm_jax.train.state import TrainState

MODES = ("ema_weights", "full_state")
FULL_STATE_KEYS = ("params", "opt_state", "ema", "buffers")


class WarmStartError(errors.UserError, ValueError):
  """init_from names no usable checkpoint; the message names the flag and what was found."""


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _flags(cfg: ml_collections.ConfigDict) -> str:
  step = f" --config.init_from.step={cfg.step}" if cfg.step >= 0 else ""
  return f"--config.init_from.path={cfg.path}{step} (mode {cfg.mode})"


def warm_start(cfg: ml_collections.ConfigDict, fresh: TrainState,
               model_config: ModelConfig) -> tuple[TrainState, dict[str, Any]]:
  """(first state, record) from the checkpoint `cfg` (the config's init_from) names.

  `fresh` is the new run's initialised, sharded state: its step (0) and rng are kept, and
  the restored arrays take its shardings. The record {"path", "step", "mode",
  "optimizer_count"} is what `lr_count_offset` reads back.
  """
  if cfg.mode not in MODES:
    raise WarmStartError(f"--config.init_from.mode={cfg.mode!r}: expected one of {MODES}")
  if cfg.mode == "full_state" and not cfg.use_ema:
    raise WarmStartError("--config.init_from.use_ema=False picks the weights of mode ema_weights; "
                     "mode full_state takes params, optimizer state and EMA as they are")
  flags = _flags(cfg)
  try:
    mngr, step, where = checkpoint_layout.locate(cfg.path, cfg.step if cfg.step >= 0 else None)
    saved = checkpoint_layout.read_config(mngr, step, where)
    tree = checkpoint_layout.state_metadata(mngr, step, where)
  except checkpoint_layout.NotACheckpointError as e:
    raise WarmStartError(f"{flags}: {e}") from e
  if cfg.mode == "full_state":
    missing = [k for k in FULL_STATE_KEYS if k not in tree]
    if missing:
      raise WarmStartError(f"{flags}: {where} has no {', '.join(missing)} (a weights-only "
                       "checkpoint, e.g. from convert.py --from_hf); full_state needs a "
                       "training run's checkpoint, or use --config.init_from.mode=ema_weights")
    keys = {k: k for k in FULL_STATE_KEYS}
  else:
    keys = {"params": checkpoint_layout.weights_key(tree, cfg.use_ema), "buffers": "buffers"}
  if not jax.tree.leaves(fresh.buffers):
    keys.pop("buffers")  # models without buffers (transformer, ...) store an empty dict
  wanted = {saved_key: _abstract(getattr(fresh, key)) for key, saved_key in keys.items()}
  one_count = "opt_state" in wanted and ckpt_lib.has_one_count(tree.get("opt_state"))
  if one_count:
    wanted["opt_state"] = ckpt_lib.one_count_layout(wanted["opt_state"])
  try:
    checkpoint_layout.check_model_config(saved["model_config"], model_config, str(where))
    checkpoint_layout.check_shapes({k: tree.get(k) for k in wanted}, wanted, str(where))
  except checkpoint_layout.CheckpointMismatchError as e:
    raise checkpoint_layout.CheckpointMismatchError(f"{flags}: {e}") from e
  restored = checkpoint_layout.restore_keys(mngr, step, wanted,
                                      checkpoint_layout.sharded_restore_args(wanted))
  values = {key: restored[saved_key] for key, saved_key in keys.items()}
  if one_count:
    values["opt_state"] = ckpt_lib.per_tensor_counts(values["opt_state"],
                                                     _abstract(fresh.opt_state), str(where))
  count = 0
  if cfg.mode == "full_state":
    count = int(jax.device_get(values["opt_state"].count))
  else:  # separate buffers: params and ema are donated to the step independently
    values["ema"] = jax.tree.map(jnp.copy, values["params"])
  record = {"path": str(where), "step": step, "mode": cfg.mode, "optimizer_count": count}
  return fresh.replace(**values), record


def lr_count_offset(record: dict[str, Any] | None) -> int:
  """Optimizer count at which the new run's lr schedule starts (its step 0): the source's
  count after full_state, else 0."""
  return int(record["optimizer_count"]) if record else 0
