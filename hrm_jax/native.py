"""Native checkpoint directory: `config.json` (ModelConfig fields) + an orbax parameter tree.

A stand-in for the training checkpoints until they exist: `variables/` holds the plain
{"params", "buffers"} tree written by orbax (tensorstore), loadable without the trainer.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from hrm_jax.config import ModelConfig

CONFIG = "config.json"
VARIABLES = "variables"


def is_native(path: str | os.PathLike) -> bool:
  return (pathlib.Path(path) / VARIABLES).is_dir()


def save(path: str | os.PathLike, config: ModelConfig, variables: dict) -> None:
  """Write config and {"params", "buffers"} to `path` (built beside it, then renamed in)."""
  path = pathlib.Path(path).absolute()
  tree = nn.unbox({k: variables[k] for k in ("params", "buffers")})
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    (tmp / CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / VARIABLES, jax.tree_util.tree_map(np.asarray, tree))
    if path.exists():
      raise FileExistsError(f"{path} exists; refusing to overwrite a checkpoint")
    tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
  """(ModelConfig, {"params", "buffers"}) of a directory written by `save`."""
  path = pathlib.Path(path).absolute()
  if not (path / CONFIG).exists() or not is_native(path):
    raise FileNotFoundError(f"{path}: not a native checkpoint (needs {CONFIG} and {VARIABLES}/)")
  config = ModelConfig(**json.loads((path / CONFIG).read_text()))
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(path / VARIABLES)
  return config, variables
