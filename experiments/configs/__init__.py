"""Training configs, selected by name: `--config=hrm1b`, with dotted overrides.

Each NAME.py beside this file defines `get_config()`; `base.py` holds the shared fields.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import Optional, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from hrm_jax import cli

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = tuple(sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                     if f.endswith(".py") and f not in ("__init__.py", "base.py")))
# Keys that moved, old -> new: the bp_steps warm-up is training's, no longer the model's.
MOVED = {f"model.{k}": f"train.{k}" for k in ("bp_min_steps", "bp_max_steps", "bp_warmup_ratio")}


def path_of(name_or_path: str) -> str:
  """experiments/configs/NAME.py for a config name; a path (with optional :arg) unchanged."""
  base = name_or_path.split(":", 1)[0]
  if base.endswith(".py") or os.sep in base:
    return name_or_path
  if base not in NAMES:
    raise ValueError(f"--config={name_or_path!r}: unknown config; valid names: {list(NAMES)}")
  return os.path.join(CONFIG_DIR, base + ".py")


def resolve_argv(argv: Sequence[str], default: str = "demo") -> list[str]:
  """argv with --config=NAME mapped to its file, after checking --config.x.y override keys
  against that config, named or a file (ValueError naming the flag otherwise)."""
  argv = list(argv)
  name = default
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      name = arg.split("=", 1)[1]
      argv[i] = "--config=" + path_of(name)
  if name not in NAMES and not os.path.isfile(name.partition(":")[0]):
    raise ValueError(f"--config={name}: no such config file (or names: {list(NAMES)})")
  if any(a.startswith("--config.") for a in argv[1:]):
    check_overrides(get(name) if name in NAMES else load_file(name), argv[1:])
  return argv


def load_file(path_and_arg: str) -> ml_collections.ConfigDict:
  """get_config() of a config file given as --config=PATH[:ARG] (as config_flags reads it)."""
  path, _, arg = path_and_arg.partition(":")
  spec = importlib.util.spec_from_file_location("hrm_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - the user's file: any failure is reported as one line
    raise ValueError(f"--config={path_and_arg}: cannot load it ({type(e).__name__}: {e})"
                     ) from None


def define_config_flag(help_text: str, default: str = "demo"):
  """`--config` (a name or a file) with `--config.x.y` overrides. The override keys on the
  command line are checked first: config_flags applies them to the default config while
  the flag is defined, where an unknown key would end the import in a traceback."""
  try:
    resolve_argv(sys.argv, default)
  except ValueError as e:
    cli.fail(str(e))
  return config_flags.DEFINE_config_file("config", path_of(default), help_text,
                                         lock_config=True)


def get(name: str) -> ml_collections.ConfigDict:
  if name not in NAMES:
    raise ValueError(f"unknown config {name!r}; valid names: {list(NAMES)}")
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  return module.get_config()


def valid_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += valid_keys(v, f"{prefix}{k}.")
    else:
      keys.append(prefix + k)
  return keys


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
  """Fail on `--config.some.key=...` naming a key the config does not have."""
  keys = set(valid_keys(config))
  for arg in argv:
    m = re.match(r"--config\.([\w.]+)", arg)
    if m and m.group(1) in MOVED and MOVED[m.group(1)] in keys:
      raise ValueError(f"--config.{m.group(1)} is now --config.{MOVED[m.group(1)]} (the bp_steps "
                       "warm-up is part of training)")
    if m and m.group(1) not in keys:
      key = m.group(1)
      section = key.split(".")[0] + "."
      near = difflib.get_close_matches(key, sorted(keys), n=3)
      same = sorted(k for k in keys if k.startswith(section))
      hint = (f"did you mean {' or '.join(map(repr, near))}?" if near else
              f"keys of {section[:-1]!r}: {', '.join(same)}" if same else
              f"sections: {', '.join(sorted({k.split('.')[0] for k in keys}))}")
      raise ValueError(f"{arg.split('=')[0]}: unknown config key {key!r}; {hint}")


def parse_flags(argv: list[str], default: str = "demo") -> list[str]:
  """absl flags parser for scripts with a `--config` file flag (see `resolve_argv`)."""
  try:
    argv = resolve_argv(argv, default)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return flags.FLAGS(argv)


def workdir_from(workdir: Optional[str], out: Optional[str], default: str) -> str:
  """The run's output directory: --workdir, else the deprecated --out (kept for one release,
  with a warning), else `default`; both flags at once is a usage error."""
  if out is not None:
    if workdir is not None:
      raise app.UsageError(f"--out={out} and --workdir={workdir}: --out is a deprecated "
                           "alias of --workdir; pass only --workdir")
    logging.warning("--out is deprecated and will be removed in the next release; "
                    "use --workdir=%s", out)
    return out
  return workdir or default

