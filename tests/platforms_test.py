"""The platform scripts pin: the CPU only where no accelerator is and the user chose none."""

import os
import subprocess
import sys

from hrm_jax import platforms
from helpers import ROOT


def test_accelerators_are_found_by_their_device_nodes(tmp_path):
  assert not platforms.has_accelerator((str(tmp_path / "nvidia[0-9]*"),))
  (tmp_path / "nvidia0").write_text("")
  assert platforms.has_accelerator((str(tmp_path / "nvidia[0-9]*"),))


def test_the_users_choice_is_kept_and_cpu_pinned_otherwise():
  code = ("import jax; from hrm_jax import platforms; p = platforms.select_default(); "
          "print(p, jax.config.jax_platforms, jax.default_backend())")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["PYTHONPATH"] = str(ROOT)
  unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
  chosen = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
  if not platforms.has_accelerator():
    assert unset.stdout.split() == ["cpu", "cpu", "cpu"] and not unset.stderr, unset.stderr
  assert chosen.stdout.split() == ["None", "cpu", "cpu"], chosen.stderr
