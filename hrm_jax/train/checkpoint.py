"""Orbax checkpoints: async, keep-N, holding the train state, data-iterator state and config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`. A save is atomic (orbax writes a
temporary directory and renames it), so an interrupt never leaves a half checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import traceback
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from hrm_jax import native
from hrm_jax.config import ModelConfig

# ModelConfig fields that may change between runs without changing the parameters' meaning.
IMPLEMENTATION_FIELDS = frozenset(
    {"dtype", "attention_impl", "attention_chunk", "remat_policy", "remat_scope", "unroll_scans",
     "bp_min_steps", "bp_max_steps", "bp_warmup_ratio"})


_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes <step>.orbax-checkpoint-tmp*, then renames


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a run with another model."""


def manager(directory: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a save cut short (kill -9, full disk) leaves an orbax temp
  # directory beside the finished steps; it is removed when the run restarts.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=True)
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=handlers)


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (full disk, permissions); earlier ones are intact."""


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: Optional[dict],
         config: dict, force: bool = False) -> bool:
  """Start saving `step` (asynchronously if the manager is); CheckpointSaveError if this
  save, or an earlier asynchronous one that failed in the background, could not write."""
  try:
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        config=ocp.args.JsonSave(config)), force=force)
  except Exception as e:  # noqa: BLE001 - reported with its cause below
    raise _save_failed(mngr, step, e) from e


def wait(mngr: ocp.CheckpointManager, step: int) -> None:
  """Block until the pending asynchronous save is written; CheckpointSaveError if not."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _save_failed(mngr, step, e) from e


def _save_failed(mngr: ocp.CheckpointManager, step: int, error: BaseException
                 ) -> CheckpointSaveError:
  """One clear error for a failed save: the step, the path, the cause; the partial
  directory orbax left is removed (process 0: the one that writes the directory)."""
  directory = str(mngr.directory)
  partial = sorted(n for n in os.listdir(directory) if _TMP_SUFFIX in n) \
      if os.path.isdir(directory) else []
  steps = sorted({int(n.split(".")[0]) for n in partial if n.split(".")[0].isdigit()})
  if jax.process_index() == 0:
    for name in partial:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  text = "".join(traceback.format_exception(error))
  if "No space left" in text or "ENOSPC" in text:
    cause = "no space left on device"
  else:
    cause = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
  failed = ", ".join(map(str, steps)) or str(step)
  kept = [s for s in mngr.all_steps(read=True) if s not in steps]
  return CheckpointSaveError(
      f"saving the checkpoint of step {failed} in {directory} failed: {cause}. The partial "
      f"directory was removed; the checkpoints already written are intact "
      f"({', '.join(map(str, sorted(kept))) or 'none'}) and a rerun resumes from the latest.")


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


def _check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
                  where: str) -> None:
  """Raise CheckpointMismatchError if the saved arrays' shapes differ from this config's
  (read from the checkpoint's metadata, so a damaged array file is not called a mismatch)."""
  meta = mngr.item_metadata(step)["state"]
  meta = getattr(meta, "tree", meta)
  saved = {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(m.shape)
           for p, m in jax.tree_util.tree_leaves_with_path(meta) if hasattr(m, "shape")}
  wanted = {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(a.shape)
            for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)}
  diffs = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
  if diffs:
    shown = ", ".join(f"{k}: checkpoint {saved.get(k)} vs config {wanted.get(k)}"
                      for k in diffs[:5])
    raise CheckpointMismatchError(
        f"{where}: the saved train state does not match this config's shapes ({shown}"
        f"{', ...' if len(diffs) > 5 else ''})")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            model_config: ModelConfig) -> tuple[Any, dict, dict]:
  """(state, data-iterator state, saved config) of `step`, laid out as abstract_state says.

  CheckpointMismatchError when the checkpoint is readable but was written for another model;
  any other exception means the checkpoint's files are damaged.
  """
  where = os.path.join(str(mngr.directory), str(step))
  meta = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  saved_config = meta["config"]
  check_model_config(saved_config.get("model_config", {}), model_config, where)
  _check_shapes(mngr, step, abstract_state, where)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return out["state"], dict(out["data"] or {}), saved_config


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   model_config: ModelConfig) -> Optional[tuple[Any, dict, dict]]:
  """`restore` of the newest checkpoint that restores, or None when there is none.

  A damaged checkpoint (a truncated or missing array file, a missing item: a disk that
  filled up, a copy cut short) is skipped with a warning naming it, and the next older one
  is tried; its files are left as they are for the user to inspect.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return restore(mngr, step, abstract_state, model_config)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
      where = os.path.join(str(mngr.directory), str(step))
      message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      logging.warning("checkpoint %s cannot be restored (%s); trying an older one", where,
                      message)
      if jax.process_index() == 0:
        print(f"WARNING: checkpoint {where} cannot be restored ({message}); "
              "trying an older one", flush=True)
  return None


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
