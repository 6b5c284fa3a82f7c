"""Native checkpoints = the training checkpoints of `hrm_jax.train` (orbax CheckpointManager).

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`; `state` is the TrainState tree
(`step, params, opt_state, ema, buffers, rng`), `config` is JSON `{"config": <training
config>, "model_config": <ModelConfig fields>}`. `load` restores only what inference needs
(params or EMA, and buffers) with an orbax partial restore, never the optimizer state.

`save` writes the same layout for weights without a training run (`convert.py --from_hf`):
`state` holds only `step` (0) and `params`, `buffers`, and `config` has no training config.
There is one set of weights, so no `ema` copy is stored (it would double the disk size);
`load(use_ema=True)` and `init_from.use_ema` fall back to `params` for such checkpoints.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from hrm_jax import atomic
from hrm_jax.config import ModelConfig

CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "config")
EXPECTED = ("a training workdir (<workdir>/checkpoints/<step>/state), its checkpoints/ "
            "directory, or one <step> directory")


class NotACheckpointError(FileNotFoundError):
  """The path holds no hrm_jax checkpoint (or something else, such as a HF directory)."""


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, item_handlers=handlers,
                               options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0))


def _has_steps(directory: pathlib.Path) -> bool:
  return directory.is_dir() and any(p.name.isdigit() and (p / "state").is_dir()
                                    for p in directory.iterdir())


def locate(path: str | os.PathLike) -> tuple[ocp.CheckpointManager, int, pathlib.Path]:
  """(read-only manager, step, step directory) of the checkpoint `path` names.

  `path` is a training workdir (its latest step), a checkpoints/ directory (latest step)
  or one step directory.
  """
  p = pathlib.Path(path).expanduser().absolute()
  if not p.is_dir():
    raise NotACheckpointError(f"{p}: no such directory; expected {EXPECTED}")
  if p.name.isdigit() and (p / "state").is_dir():
    return _manager(p.parent), int(p.name), p
  for root in (p / CHECKPOINTS, p):
    if _has_steps(root):
      mngr = _manager(root)
      step = mngr.latest_step()
      if step is not None:
        return mngr, step, root / str(step)
  if (p / "config.json").exists() and any(p.glob("model.safetensors*")):
    raise NotACheckpointError(f"{p} is a Hugging Face directory, not an hrm_jax checkpoint; "
                              "read it with hrm_jax.hf.load (or convert.py --from_hf)")
  if (p / "variables").is_dir():
    raise NotACheckpointError(f"{p} has the retired native layout (config.json + variables/); "
                              "re-create it with convert.py --from_hf=<HF dir> --to=<dir>")
  raise NotACheckpointError(f"{p}: no finished checkpoint found; expected {EXPECTED}")


def saved_config(path: str | os.PathLike) -> dict[str, Any]:
  """The `config` item of the checkpoint at `path`: {"model_config", "config"?}."""
  mngr, step, where = locate(path)
  return read_config(mngr, step, where)


def read_config(mngr: ocp.CheckpointManager, step: int, where: pathlib.Path) -> dict:
  if not (where / "config").is_dir():
    raise NotACheckpointError(f"{where}: no `config` item (ModelConfig) in this checkpoint")
  saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  if not isinstance(saved, dict) or "model_config" not in saved:
    raise NotACheckpointError(f"{where}/config: expected a JSON object with 'model_config'")
  return saved


def weights_key(state_keys: Any, use_ema: bool) -> str:
  """'ema' when asked for and stored (training checkpoints), else 'params'."""
  return "ema" if use_ema and "ema" in state_keys else "params"


def load(path: str | os.PathLike, use_ema: bool = True) -> tuple[ModelConfig, dict]:
  """(ModelConfig, {"params", "buffers"}) as host float arrays; EMA weights when use_ema.

  Only the weights and buffers are read (orbax partial restore), not the optimizer state.
  """
  mngr, step, where = locate(path)
  config = ModelConfig(**read_config(mngr, step, where)["model_config"])
  tree = mngr.item_metadata(step)["state"]
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise NotACheckpointError(f"{where}/state: expected a train state with 'params', found "
                              f"{sorted(tree) if isinstance(tree, dict) else type(tree)}")
  key = weights_key(tree, use_ema)
  wanted = {key: tree[key], "buffers": tree.get("buffers", {})}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True)))["state"]
  return config, {"params": state[key], "buffers": state["buffers"]}


def save(path: str | os.PathLike, config: ModelConfig, variables: dict, step: int = 0,
         extra_files: Sequence[str | os.PathLike] = ()) -> None:
  """Write a weights-only checkpoint directory that `load` (and `init_from`) read.

  `extra_files` (e.g. the tokenizer) are copied to the top of `path`, where generate.py
  looks. Built beside `path` and renamed into place (`atomic.directory`, umask modes); an
  existing non-empty `path` is never replaced.
  """
  path = pathlib.Path(path).expanduser().absolute()
  tree = nn.unbox({k: variables[k] for k in ("params", "buffers")})
  state = {"step": np.asarray(step, np.int32),
           **jax.tree.map(lambda a: np.asarray(a), tree)}
  with atomic.directory(path) as tmp:
    with ocp.CheckpointManager(tmp / CHECKPOINTS, item_names=ITEMS) as mngr:
      mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave({"model_config": config.to_dict()})))
      mngr.wait_until_finished()
    for extra in extra_files:
      shutil.copy2(extra, tmp / pathlib.Path(extra).name)
