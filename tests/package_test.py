"""`import hrm_jax`: every subpackage is an attribute, the heavy ones imported on first use."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Imported only by training, data, evaluation and plotting: not by `import hrm_jax`.
HEAVY = ("hrm_jax.optim", "hrm_jax.train", "hrm_jax.data", "hrm_jax.eval", "optax", "grain",
         "math_verify", "matplotlib", "tensorboardX")


def fresh(code: str) -> dict:
  """Run `code` in a new interpreter (nothing imported yet); it prints one JSON value."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_subpackages_are_attributes_imported_on_first_use():
  got = fresh(
      "import json, sys, hrm_jax\n"
      f"before = [m for m in {HEAVY!r} if m in sys.modules]\n"
      "adam = hrm_jax.optim.adam_atan2\n"
      "names = {n: type(getattr(hrm_jax, n)).__name__ for n in ('data', 'eval', 'train')}\n"
      "loop = hrm_jax.train.loop.train.__module__\n"
      "print(json.dumps({'before': before, 'adam': adam.__module__, 'names': names,\n"
      "                  'loop': loop, 'dir': 'optim' in dir(hrm_jax)}))\n")
  assert got["before"] == []
  assert got["adam"] == "hrm_jax.optim"
  assert got["names"] == {"data": "module", "eval": "module", "train": "module"}
  assert got["loop"] == "hrm_jax.train.loop"
  assert got["dir"]


def modules_in(folder: pathlib.Path) -> set[str]:
  return {p.stem if p.suffix == ".py" else p.name for p in folder.iterdir()
          if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}


def test_every_module_file_is_a_submodule_and_unknown_names_fail():
  import hrm_jax
  assert set(hrm_jax.SUBMODULES) == modules_in(ROOT / "hrm_jax")
  assert set(hrm_jax.train.SUBMODULES) == modules_in(ROOT / "hrm_jax" / "train")
  assert hrm_jax.atomic.write_json is not None
  with pytest.raises(AttributeError, match="has no attribute 'optimizer'"):
    hrm_jax.optimizer  # noqa: B018
