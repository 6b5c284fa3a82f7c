"""The checkpoint layout shared by training and inference: where the step directories are, the
names of their items, and reading items back (whole, or only some keys of the train state).

Layout: `<workdir>/checkpoints/<step>/{state,data,config}` (orbax CheckpointManager).
`state` is the TrainState tree (`step, params, opt_state, ema, buffers, rng`; a weights-only
checkpoint, `native_weights.save`, holds `step, params, buffers`), `data` the data iterator's
state (JSON), `config` is JSON `{"config": <training config>, "model_config": <ModelConfig>,
"execution": <Execution>}`. Checkpoints written before issue 30 have no "execution": their
flat "model_config" holds it (read by `saved_model_config` and `saved_execution`).

This module sits at the top of the package, not under train/, because inference
(`native_weights.load`, convert.py, generate.py, eval.py) reads the same directories and must
not import the training code; `hrm_jax.train.run_checkpoints` (writing, resuming) and
`hrm_jax.train.warm_start` (init_from) build on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from hrm_jax import errors, orbax_buckets, storage
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models import registry

CHECKPOINTS = "checkpoints"  # the directory of step directories inside a workdir
STATE, DATA, CONFIG = "state", "data", "config"
ITEMS = (STATE, DATA, CONFIG)
EXPECTED = ("a training workdir (<workdir>/checkpoints/<step>/state), its checkpoints/ "
            "directory, or one <step> directory")


class NotACheckpointError(FileNotFoundError):
  """The path holds no hrm_jax checkpoint (or something else, such as a HF directory)."""


class CheckpointMismatchError(errors.UserError, ValueError):
  """The checkpoint was written by a run with another model."""


def item_handlers(directory: str | os.PathLike) -> dict[str, ocp.CheckpointHandler]:
  """The handlers a training run writes its items with (the whole train state at once)."""
  return {STATE: ocp.StandardCheckpointHandler(
              use_ocdbt=orbax_buckets.use_ocdbt(directory)),
          DATA: ocp.JsonCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}


def writer(directory: str | os.PathLike, **options: Any) -> ocp.CheckpointManager:
  """A writing manager of a checkpoints/ directory, local or in a bucket (`orbax_buckets`);
  `options` are CheckpointManagerOptions fields."""
  return ocp.CheckpointManager(
      orbax_buckets.directory(directory), item_handlers=item_handlers(directory),
      options=ocp.CheckpointManagerOptions(**options,
                                           **orbax_buckets.manager_options(directory)))


class _ReadOnlyNotice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns "Given directory is read only" whenever a read-only manager is made, which
  every load does on purpose; the notice is dropped, other warnings are kept."""
  notice = _ReadOnlyNotice()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(notice)


def reader(directory: str | os.PathLike) -> ocp.CheckpointManager:
  """A read-only manager of a checkpoints/ directory; its `state` handler restores any
  subset of the train state's keys (`restore_keys`)."""
  handlers = {STATE: ocp.PyTreeCheckpointHandler(), DATA: ocp.JsonCheckpointHandler(),
              CONFIG: ocp.JsonCheckpointHandler()}
  with _without_read_only_notice():
    return ocp.CheckpointManager(orbax_buckets.directory(directory), item_handlers=handlers,
                                 options=ocp.CheckpointManagerOptions(
                                     read_only=True, create=False, save_interval_steps=0,
                                     **orbax_buckets.manager_options(directory)))


def is_complete(step_dir: pathlib.Path) -> bool:
  """Whether a step directory still has the metadata files orbax writes for it (the step's,
  its state's, its config's). A deletion cut short (kill -9 while orbax removes an old
  checkpoint, its files in parallel) leaves a directory that lacks some of them."""
  names = ["_CHECKPOINT_METADATA", f"{STATE}/_METADATA", f"{CONFIG}/metadata"]
  if storage.is_remote(step_dir):  # committed by a marker written last (orbax_buckets)
    names.append("commit_success.txt")
  return all((step_dir / name).is_file() for name in names)


def _has_steps(directory: pathlib.Path) -> bool:
  return directory.is_dir() and any(p.name.isdigit() and (p / STATE).is_dir()
                                    for p in directory.iterdir())


def locate(path: str | os.PathLike, step: Optional[int] = None
           ) -> tuple[ocp.CheckpointManager, int, pathlib.Path]:
  """(read-only manager, step, step directory) of the checkpoint `path` names.

  `path` is a training workdir, a checkpoints/ directory (their latest step, or `step`) or
  one step directory (whose name must then equal `step`, if given).
  """
  p = storage.path(path)
  if not p.is_dir():
    raise NotACheckpointError(f"{p}: no such directory; expected {EXPECTED}")
  if p.name.isdigit() and (p / STATE).is_dir():
    if step is not None and step != int(p.name):
      raise NotACheckpointError(f"{p} is the checkpoint of step {p.name}, not of step {step}; "
                                "pass its workdir or checkpoints/ directory to choose a step")
    if not is_complete(p):
      raise NotACheckpointError(f"{p} is an incomplete checkpoint (a save or deletion was cut "
                                "short); pass its workdir to use the latest complete one")
    return reader(p.parent), int(p.name), p
  for root in (p / CHECKPOINTS, p):
    if _has_steps(root):
      mngr = reader(root)
      steps = sorted(s for s in mngr.all_steps() if is_complete(root / str(s)))
      if step is not None and step not in steps:
        listed = ", ".join(map(str, steps)) or "none"
        if (root / str(step)).is_dir():
          raise NotACheckpointError(f"{root}: the checkpoint of step {step} is incomplete (a "
                                    f"save or deletion was cut short); complete steps: {listed}")
        raise NotACheckpointError(f"{root}: no checkpoint of step {step}; it has steps {listed}")
      chosen = (steps[-1] if steps else None) if step is None else step
      if chosen is not None:
        return mngr, chosen, root / str(chosen)
  if (p / "config.json").exists() and any(p.glob("model.safetensors*")):
    raise NotACheckpointError(f"{p} is a Hugging Face directory, not an hrm_jax checkpoint; "
                              "read it with hrm_jax.hf.load (or convert.py --from_hf)")
  if (p / "variables").is_dir():
    raise NotACheckpointError(f"{p} has the retired native layout (config.json + variables/); "
                              "re-create it with convert.py --from_hf=<HF dir> --to=<dir>")
  raise NotACheckpointError(f"{p}: no finished checkpoint found; expected {EXPECTED}")


def read_config(mngr: ocp.CheckpointManager, step: int, where: pathlib.Path) -> dict:
  """The `config` item of `step`: {"model_config", "config"?, ...}."""
  if not (where / CONFIG).is_dir():
    raise NotACheckpointError(f"{where}: no `config` item (ModelConfig) in this checkpoint")
  saved = mngr.restore(step, args=ocp.args.Composite(
      **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
  if not isinstance(saved, dict) or "model_config" not in saved:
    raise NotACheckpointError(f"{where}/config: expected a JSON object with 'model_config'")
  return saved


def saved_config(path: str | os.PathLike, step: Optional[int] = None) -> dict[str, Any]:
  """The `config` item of the checkpoint at `path` (`locate`)."""
  mngr, step, where = locate(path, step)
  return read_config(mngr, step, where)


def state_metadata(mngr: ocp.CheckpointManager, step: int, where: pathlib.Path) -> dict:
  """The saved train state's tree of array metadata (shapes, dtypes), nothing read."""
  tree = mngr.item_metadata(step)[STATE]
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise NotACheckpointError(f"{where}/state: expected a train state with 'params', found "
                              f"{sorted(tree) if isinstance(tree, dict) else type(tree)}")
  return tree


def weights_key(state_keys: Any, use_ema: bool) -> str:
  """'ema' when asked for and stored (training checkpoints), else 'params'."""
  return "ema" if use_ema and "ema" in state_keys else "params"


def saved_model_config(saved: dict, where: Any) -> ModelConfig:
  """The ModelConfig of a `config` item (`read_config`), also of one written before issue 30."""
  try:
    return registry.model_config_from_dict(saved["model_config"])
  except (TypeError, ValueError) as e:
    raise NotACheckpointError(f"{where}/config: its model_config is not one this version "
                              f"reads ({e})") from e


def saved_execution(saved: dict) -> Execution:
  """How the run that wrote a `config` item executed its model (checkpoints before issue 30:
  the execution fields of their flat model_config)."""
  return registry.execution_from_dict(saved.get("execution", saved["model_config"]))


def check_model_config(saved: dict, current: ModelConfig, where: str) -> None:
  """Raise if the saved model config (`to_dict()` JSON, or one written before issue 30)
  differs from `current`: execution settings are not part of a ModelConfig, so they may."""
  try:
    old = registry.model_config_from_dict(saved).to_dict()
  except (TypeError, ValueError) as e:
    raise CheckpointMismatchError(f"{where} was written for a model this config cannot be "
                                  f"compared with ({e})") from e
  now = current.to_dict()
  diffs = {k: (old.get(k), now[k]) for k in now if old.get(k) != now[k]}
  if diffs:
    lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
    raise CheckpointMismatchError(
        f"{where} was written for another model ({lines}); use a new --workdir or fix the "
        "config")


def _shapes(tree: Any) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(m.shape)
          for p, m in jax.tree_util.tree_leaves_with_path(tree) if hasattr(m, "shape")}


def check_shapes(saved_metadata: Any, abstract: Any, where: str) -> None:
  """Raise CheckpointMismatchError if the saved arrays' shapes (their metadata, so a damaged
  array file is not called a mismatch) differ from `abstract`'s, a tree of the same keys."""
  saved, wanted = _shapes(saved_metadata), _shapes(abstract)
  diffs = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
  if diffs:
    shown = ", ".join(f"{k}: checkpoint {saved.get(k)} vs config {wanted.get(k)}"
                      for k in diffs[:5])
    raise CheckpointMismatchError(
        f"{where}: the saved train state does not match this config's shapes ({shown}"
        f"{', ...' if len(diffs) > 5 else ''})")


def restore_keys(mngr: ocp.CheckpointManager, step: int, wanted: dict[str, Any],
                 restore_args: dict[str, Any]) -> dict[str, Any]:
  """Only the `wanted` keys of the saved train state (orbax partial restore), laid out as
  `restore_args` say (an ArrayRestoreArgs with a sharding, or RestoreArgs to host numpy)."""
  return mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True)}))[STATE]


def sharded_restore_args(abstract: Any) -> Any:
  """Restore args placing each array as `abstract` (ShapeDtypeStructs with shardings) says."""
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
