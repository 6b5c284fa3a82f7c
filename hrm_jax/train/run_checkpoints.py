"""Writing and resuming a run's orbax checkpoints: async, keep-N (plus kept epoch ends),
holding the train state, data-iterator state and config.

Layout and item names: `hrm_jax.checkpoint_layout`. A save is atomic (orbax writes a
temporary directory and renames it; in a bucket it writes a commit marker last), so an
interrupt never leaves a half checkpoint that a restore would take.
"""

from __future__ import annotations

import logging
import os
import shutil
import traceback
from typing import Any, Collection, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from hrm_jax import checkpoint_layout
from hrm_jax import optim, storage
from hrm_jax.config import ModelConfig

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes <step>.orbax-checkpoint-tmp*, then renames


def manager(directory: str, keep: int, async_save: bool = True,
            keep_steps: Collection[int] = ()) -> ocp.CheckpointManager:
  """The run's writing manager: the newest `keep` checkpoints, plus those of `keep_steps`
  (epoch ends with checkpoint.keep_epochs), which orbax never deletes."""
  # cleanup_tmp_directories: a save cut short (kill -9, full disk) leaves an orbax temp
  # directory beside the finished steps; it is removed when the run restarts.
  rotation = dict(max_to_keep=keep)
  if keep_steps:
    rotation = dict(preservation_policy=preservation.AnyPreservationPolicy(
        [preservation.LatestN(keep), preservation.CustomSteps(sorted(keep_steps))]))
  return checkpoint_layout.writer(directory, create=True, enable_async_checkpointing=async_save,
                            cleanup_tmp_directories=True, **rotation)


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (full disk, permissions); earlier ones are intact."""


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: Optional[dict],
         config: dict, force: bool = False) -> bool:
  """Start saving `step` (asynchronously if the manager is); CheckpointSaveError if this
  save, or an earlier asynchronous one that failed in the background, could not write."""
  try:
    return mngr.save(step, args=ocp.args.Composite(**{
        checkpoint_layout.STATE: ocp.args.StandardSave(state),
        checkpoint_layout.DATA: ocp.args.JsonSave(data_state or {}),
        checkpoint_layout.CONFIG: ocp.args.JsonSave(config)}), force=force)
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
  partial = sorted(n for n in os.listdir(directory) if TMP_SUFFIX in n) \
      if not storage.is_remote(directory) and os.path.isdir(directory) else []
  steps = sorted({int(n.split(".")[0]) for n in partial if n.split(".")[0].isdigit()})
  if jax.process_index() == 0:  # (in a bucket an uncommitted step is cleaned up on restart)
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


class _OneCountState(NamedTuple):
  """optim.AdamAtan2State as checkpoints written before per-tensor counts hold it."""
  count: Any
  mu: Any
  nu: Any


def has_one_count(saved_opt_state: Any) -> bool:
  """Whether a saved optimizer state (its metadata tree) predates per-tensor counts."""
  return (isinstance(saved_opt_state, dict) and "count" in saved_opt_state
          and "counts" not in saved_opt_state)


def one_count_layout(opt_state: optim.AdamAtan2State) -> _OneCountState:
  """The abstract optimizer state to restore such a checkpoint's `opt_state` into."""
  return _OneCountState(opt_state.count, opt_state.mu, opt_state.nu)


def per_tensor_counts(restored: _OneCountState, abstract: optim.AdamAtan2State,
                      where: str) -> optim.AdamAtan2State:
  """The restored state with every tensor's count set to the run's count: the optimizer
  that wrote it advanced one count for every tensor each step, so that is the count each
  tensor's moments were built with. Says so once, naming the checkpoint `where`."""
  counts = jax.jit(lambda c: jax.tree.map(lambda _: c, abstract.counts),
                   out_shardings=jax.tree.map(lambda a: a.sharding, abstract.counts)
                   )(restored.count)
  message = (f"{where} was written before per-tensor optimizer counts: every tensor resumes "
             f"at count {int(jax.device_get(restored.count))}, as that optimizer counted; "
             "from here on a tensor without a gradient in a step is left alone, as in the "
             "reference")
  logging.warning(message)
  if jax.process_index() == 0:
    print(f"NOTE: {message}", flush=True)
  return optim.AdamAtan2State(restored.count, restored.mu, restored.nu, counts)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            model_config: ModelConfig) -> tuple[Any, dict, dict]:
  """(state, data-iterator state, saved config) of `step`, laid out as abstract_state says.

  CheckpointMismatchError when the checkpoint is readable but was written for another model;
  any other exception means the checkpoint's files are damaged.
  """
  where = os.path.join(str(mngr.directory), str(step))
  meta = mngr.restore(step, args=ocp.args.Composite(
      **{checkpoint_layout.CONFIG: ocp.args.JsonRestore()}))
  saved_config = meta[checkpoint_layout.CONFIG]
  checkpoint_layout.check_model_config(saved_config.get("model_config", {}), model_config, where)
  saved = mngr.item_metadata(step)[checkpoint_layout.STATE]
  saved = getattr(saved, "tree", saved)
  one_count = has_one_count(saved.get("opt_state") if isinstance(saved, dict) else None)
  target = abstract_state
  if one_count:
    target = abstract_state.replace(opt_state=one_count_layout(abstract_state.opt_state))
  checkpoint_layout.check_shapes(saved, target, where)
  out = mngr.restore(step, args=ocp.args.Composite(**{
      checkpoint_layout.STATE: ocp.args.StandardRestore(target),
      checkpoint_layout.DATA: ocp.args.JsonRestore()}))
  state = out[checkpoint_layout.STATE]
  if one_count:
    state = state.replace(opt_state=per_tensor_counts(state.opt_state,
                                                      abstract_state.opt_state, where))
  return state, dict(out[checkpoint_layout.DATA] or {}), saved_config


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
    except checkpoint_layout.CheckpointMismatchError:
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
