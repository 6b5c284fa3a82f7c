"""The platform scripts pin: the CPU only where no accelerator is and the user chose none
(the quiet start itself: faults_test.py runs a script without JAX_PLATFORMS)."""

import os

from hrm_jax import platforms


def test_accelerators_are_found_by_their_device_nodes(tmp_path):
  assert not platforms.has_accelerator((str(tmp_path / "nvidia[0-9]*"),))
  (tmp_path / "nvidia0").write_text("")
  assert platforms.has_accelerator((str(tmp_path / "nvidia[0-9]*"),))


def test_the_users_choice_is_kept():
  assert os.environ["JAX_PLATFORMS"] == "cpu"  # conftest's, as a user's would be
  assert platforms.select_default() is None
