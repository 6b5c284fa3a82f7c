"""Orbax checkpoints: async, keep-N, holding the train state, data-iterator state and config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`. A save is atomic (orbax writes a
temporary directory and renames it), so an interrupt never leaves a half checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from hrm_jax import native
from hrm_jax.config import ModelConfig

# ModelConfig fields that may change between runs without changing the parameters' meaning.
IMPLEMENTATION_FIELDS = frozenset(
    {"dtype", "attention_impl", "attention_chunk", "remat_policy", "remat_scope", "unroll_scans",
     "bp_min_steps", "bp_max_steps", "bp_warmup_ratio"})


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a run with another model."""


def manager(directory: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "data", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: Optional[dict],
         config: dict, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state or {}),
      config=ocp.args.JsonSave(config)), force=force)


def check_model_config(saved: dict, current: ModelConfig, where: str) -> None:
  """Raise if the saved model differs from `current` in anything but implementation."""
  now = dataclasses.asdict(current)
  diffs = {k: (saved.get(k), now[k]) for k in now
           if k not in IMPLEMENTATION_FIELDS and saved.get(k) != now[k]}
  if diffs:
    lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
    raise CheckpointMismatchError(
        f"{where} was written for another model ({lines}); use a new --workdir or fix the "
        "config")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            model_config: ModelConfig) -> tuple[Any, dict, dict]:
  """(state, data-iterator state, saved config) of `step`, laid out as abstract_state says."""
  where = os.path.join(str(mngr.directory), str(step))
  meta = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  saved_config = meta["config"]
  check_model_config(saved_config.get("model_config", {}), model_config, where)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except (ValueError, KeyError) as e:
    raise CheckpointMismatchError(
        f"{where}: the saved train state does not match this config's shapes: {e}") from e
  return out["state"], dict(out["data"] or {}), saved_config


def restore_params(path: str, use_ema: bool, abstract_params: Any,
                   model_config: ModelConfig) -> Any:
  """Weights only (SFT `init_from`): a workdir, its checkpoints/ dir or a step dir.

  EMA weights when use_ema and stored; weights-only checkpoints (native.save) have `params`.
  """
  try:
    mngr, step, where = native.locate(path)
  except native.NotACheckpointError as e:
    raise FileNotFoundError(f"init_from={path!r}: {e}") from e
  saved = native.read_config(mngr, step, where)
  check_model_config(saved.get("model_config", {}), model_config, str(where))
  tree = mngr.item_metadata(step)["state"]
  key = native.weights_key(getattr(tree, "tree", tree), use_ema)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={key: abstract_params},
      restore_args={key: jax.tree.map(
          lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract_params)},
      partial_restore=True)))
  return restored["state"][key]
