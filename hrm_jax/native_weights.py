"""Native checkpoints = the training checkpoints of `hrm_jax.train` as inference weights.

The layout, and how a path names a step, are `hrm_jax.checkpoint_layout`'s. `load` restores
only what inference needs (params or EMA, and buffers) with an orbax partial restore, never
the optimizer state.

`save` writes the same layout for weights without a training run (`convert.py --from_hf`):
`state` holds only `step` (0) and `params`, `buffers`, and `config` has no training config.
There is one set of weights, so no `ema` copy is stored (it would double the disk size);
`load(use_ema=True)` and `init_from` (mode ema_weights) fall back to `params` for such checkpoints.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from hrm_jax import atomic, checkpoint_layout, storage
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution


def load(path: str | os.PathLike, use_ema: bool = True,
         step: Optional[int] = None) -> tuple[ModelConfig, dict]:
  """(ModelConfig, {"params", "buffers"}) as host float arrays; EMA weights when use_ema;
  the latest checkpoint under `path`, or the one of `step` (as the reference's --ckpt_epoch).

  Only the weights and buffers are read (orbax partial restore), not the optimizer state.
  """
  mngr, step, where = checkpoint_layout.locate(path, step)
  config = checkpoint_layout.saved_model_config(checkpoint_layout.read_config(mngr, step, where),
                                                where)
  tree = checkpoint_layout.state_metadata(mngr, step, where)
  key = checkpoint_layout.weights_key(tree, use_ema)
  wanted = {key: tree[key], "buffers": tree.get("buffers", {})}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  try:
    state = checkpoint_layout.restore_keys(mngr, step, wanted, restore_args)
  except Exception as e:  # noqa: BLE001 - any read failure: damaged files
    cause = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
    raise checkpoint_layout.NotACheckpointError(
        f"{where}: the checkpoint's arrays cannot be read ({cause}); it is damaged or partly "
        "deleted, choose another --step") from e
  return config, {"params": state[key], "buffers": state["buffers"]}


def saved_execution(path: str | os.PathLike, step: Optional[int] = None) -> Execution:
  """How the run that wrote the checkpoint executed its model (its dtype: the one to decode
  in); `Execution()` for a weights-only checkpoint (`save`: converted weights, float32)."""
  return checkpoint_layout.saved_execution(checkpoint_layout.saved_config(path, step))


def save(path: str | os.PathLike, config: ModelConfig, variables: dict, step: int = 0,
         extra_files: Sequence[str | os.PathLike] = ()) -> None:
  """Write a weights-only checkpoint directory that `load` (and `init_from`) read.

  `extra_files` (e.g. the tokenizer) are copied to the top of `path`, where generate.py
  looks. Built beside `path` and renamed into place (`atomic.directory`, umask modes); an
  existing non-empty `path` is never replaced.
  """
  tree = nn.unbox({k: variables[k] for k in ("params", "buffers")})
  state = {"step": np.asarray(step, np.int32),
           **jax.tree.map(lambda a: np.asarray(a), tree)}
  if storage.is_remote(path):  # no rename in a bucket: orbax commits the step itself, last
    atomic.check_replaceable(path, overwrite=False)
    for extra in extra_files:
      storage.put_file(extra, storage.join(path, pathlib.Path(extra).name))
    _write_step(storage.join(path, checkpoint_layout.CHECKPOINTS), config, state, step)
    return
  with atomic.directory(pathlib.Path(path).expanduser().absolute()) as tmp:
    _write_step(tmp / checkpoint_layout.CHECKPOINTS, config, state, step)
    for extra in extra_files:
      shutil.copy2(extra, tmp / pathlib.Path(extra).name)


def _write_step(directory: str | os.PathLike, config: ModelConfig, state: dict,
                step: int) -> None:
  with checkpoint_layout.writer(directory) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        checkpoint_layout.STATE: ocp.args.StandardSave(state),
        checkpoint_layout.CONFIG: ocp.args.JsonSave({"model_config": config.to_dict()})}))
    mngr.wait_until_finished()
