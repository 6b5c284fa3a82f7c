"""hrm_jax.atomic: whole-or-nothing writes, umask modes, nothing replaced without leave."""

import os
import stat

import pytest

from hrm_jax import atomic


def _mode(p):
  return stat.S_IMODE(os.stat(p).st_mode)


def test_file_follows_umask_and_replaces_whole(tmp_path):
  old = os.umask(0o022)
  try:
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert _mode(tmp_path / "a.json") == 0o644
    with pytest.raises(RuntimeError):
      with atomic.file(tmp_path / "a.json") as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert (tmp_path / "a.json").read_text() == '{\n "x": 1\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]
  finally:
    os.umask(old)


def test_directory_modes_and_crash_leaves_nothing(tmp_path):
  old = os.umask(0o027)
  try:
    with atomic.directory(tmp_path / "out") as tmp:
      (tmp / "sub").mkdir()
      (tmp / "sub" / "f.bin").write_bytes(b"x")
    assert _mode(tmp_path / "out") == 0o750
    assert _mode(tmp_path / "out" / "sub") == 0o750
    assert _mode(tmp_path / "out" / "sub" / "f.bin") == 0o640
    with pytest.raises(RuntimeError):
      with atomic.directory(tmp_path / "new"):
        raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == ["out"]
  finally:
    os.umask(old)


def test_directory_refuses_non_empty_unless_same_kind_and_overwrite(tmp_path):
  target = tmp_path / "run"
  target.mkdir()
  (target / "metrics.jsonl").write_text("precious\n")
  with pytest.raises(FileExistsError, match=r"run exists and is not empty.*--overwrite"):
    with atomic.directory(target, same_kind=lambda p: None):
      pass
  with pytest.raises(FileExistsError, match=r"run exists and is not empty.*choose a new path"):
    with atomic.directory(target):  # nothing may replace it: no flag to suggest
      pass
  with pytest.raises(FileExistsError, match="not a directory this command wrote"):
    with atomic.directory(target, overwrite=True, same_kind=lambda p: "it has metrics.jsonl"):
      pass
  assert (target / "metrics.jsonl").read_text() == "precious\n"
  with atomic.directory(target, overwrite=True, same_kind=lambda p: None) as tmp:
    (tmp / "config.json").write_text("{}")
  assert os.listdir(target) == ["config.json"]
  (tmp_path / "afile").write_text("input")
  with pytest.raises(FileExistsError, match="afile exists and is not a directory"):
    with atomic.directory(tmp_path / "afile", overwrite=True, same_kind=lambda p: None):
      pass
  assert (tmp_path / "afile").read_text() == "input"
  (tmp_path / "empty").mkdir()
  with atomic.directory(tmp_path / "empty") as tmp:
    (tmp / "x").write_text("1")
  assert os.listdir(tmp_path / "empty") == ["x"]


def test_modes_never_follow_symlinks_out_of_the_directory(tmp_path):
  outside = tmp_path / "secret"
  outside.write_text("x")
  os.chmod(outside, 0o600)
  old = os.umask(0o022)
  try:
    with atomic.directory(tmp_path / "out") as tmp:
      (tmp / "link").symlink_to(outside)
      (tmp / "dirlink").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
  finally:
    os.umask(old)
  assert _mode(outside) == 0o600 and (tmp_path / "out" / "link").is_symlink()
  assert _mode(tmp_path / "elsewhere") == 0o700


def test_writes_go_through_symlinks_into_their_targets(tmp_path):
  """Before: --overwrite onto /data/sft -> /disk2/sft replaced the link with a directory,
  left the target stale and a hidden .sft.old-* link behind."""
  (tmp_path / "disk").mkdir()
  target = tmp_path / "disk" / "export"
  with atomic.directory(target) as tmp:
    (tmp / "config.json").write_text("old")
  link = tmp_path / "export"
  link.symlink_to(target)
  with atomic.directory(link, overwrite=True, same_kind=lambda p: None) as tmp:
    (tmp / "config.json").write_text("new")
  assert link.is_symlink() and (target / "config.json").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["disk", "export"]
  assert os.listdir(tmp_path / "disk") == ["export"]
  (tmp_path / "notes.txt").write_text("a")
  (tmp_path / "notes_link").symlink_to(tmp_path / "notes.txt")
  atomic.write_text(tmp_path / "notes_link", "b")
  assert (tmp_path / "notes_link").is_symlink() and (tmp_path / "notes.txt").read_text() == "b"


def test_check_writable_names_the_flag_and_the_folder(tmp_path):
  atomic.check_writable(tmp_path / "new" / "deeper" / "out.json", "--output")
  (tmp_path / "afile").write_text("x")
  with pytest.raises(NotADirectoryError, match=f"--output={tmp_path}/afile/r.json: "):
    atomic.check_writable(tmp_path / "afile" / "r.json", "--output")
  if os.geteuid() != 0:  # root writes anywhere
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="is not writable"):
      atomic.check_writable(tmp_path / "ro" / "r.json", "--output")
