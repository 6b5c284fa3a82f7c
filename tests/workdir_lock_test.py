"""The training workdir lock: one holder, refused with its pid and host, released on exit."""

import os

import pytest

from hrm_jax import errors
from hrm_jax.train import workdir_lock


def test_second_holder_is_refused_with_the_first_ones_pid_and_host(tmp_path):
  with workdir_lock.held(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()} on host "):
      with workdir_lock.held(str(tmp_path)):
        pass
  with workdir_lock.held(str(tmp_path)):  # released at the end of the block
    pass


def test_a_workdir_that_cannot_hold_a_run_is_a_user_error(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(errors.UserError, match="exists and is not a directory"):
    with workdir_lock.held(str(a_file)):
      pass
  with pytest.raises(errors.UserError, match="cannot create it"):
    with workdir_lock.held(str(a_file / "sub")):
      pass


def test_a_workdir_made_for_a_run_that_wrote_nothing_is_removed(tmp_path):
  with pytest.raises(RuntimeError):
    with workdir_lock.held(str(tmp_path / "new")):
      raise RuntimeError("a config error before any output")
  assert not (tmp_path / "new").exists()
  with workdir_lock.held(str(tmp_path / "kept")):
    (tmp_path / "kept" / "metrics.jsonl").write_text("")
  assert sorted(os.listdir(tmp_path / "kept")) == ["metrics.jsonl", workdir_lock.LOCK_FILE]
