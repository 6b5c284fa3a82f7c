"""Atomic writes: a file or a directory appears whole at its path, or not at all.

Everything is built beside its destination (same filesystem, so the final rename is atomic)
and then given the modes the user's umask asks for: `tempfile` creates 0600 files and 0700
directories, which would leave exports and data sets unreadable to the rest of a team.
Nothing that exists is replaced unless the caller says it may be (`overwrite`) and the
existing directory is of the kind being written (`same_kind`). A path that is a symbolic link
is written through: the new file or directory replaces the link's target (built beside the
target, on its filesystem) and the link stays, as `cp`/`rsync` onto a linked output do.

A bucket URL (`gs://`, `s3://`) has no rename: a file is written locally and uploaded as one
object (visible only once complete), a directory is built locally and uploaded file by file
with its `marker` (the file readers look for) last; see `hrm_jax.storage`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator, Optional

from hrm_jax import storage


def umask() -> int:
  """The process umask (read by setting and restoring it; there is no getter)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def real(path: str | os.PathLike) -> pathlib.Path:
  """The absolute path with `~` and symbolic links resolved: what a write to `path` changes."""
  return pathlib.Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_writable(path: str | os.PathLike, flag: str) -> None:
  """PermissionError naming `flag` unless `path` can be created or replaced: its nearest
  existing folder must be a writable directory (checked before work, not after it). A
  bucket URL is checked for its filesystem package only (permissions show on the write)."""
  if storage.is_remote(path):
    storage.require(path)
    return
  target = real(path)
  folder = target.parent
  while not folder.exists() and folder != folder.parent:
    folder = folder.parent
  if not folder.is_dir():
    raise NotADirectoryError(f"{flag}={path}: {folder} is not a directory")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise PermissionError(f"{flag}={path}: cannot write there ({folder} is not writable)")


def _apply_umask(root: pathlib.Path) -> None:
  """Umask modes for `root` and everything under it; symlinks are left alone (chmod would
  follow them to files outside)."""
  mask = umask()
  if root.is_file():
    os.chmod(root, 0o666 & ~mask)
    return
  os.chmod(root, 0o777 & ~mask)
  for folder, dirs, files in os.walk(root):
    for names, mode in ((dirs, 0o777), (files, 0o666)):
      for name in names:
        if not os.path.islink(os.path.join(folder, name)):
          os.chmod(os.path.join(folder, name), mode & ~mask)


@contextlib.contextmanager
def file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """Open a temp file beside `path`; on a clean exit it replaces `path` (umask modes). For a
  bucket URL the temp file is local and is uploaded as one object."""
  if storage.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="hrm_jax-upload-") as folder:
      local = pathlib.Path(folder) / "file"
      with open(local, mode) as f:
        yield f
      storage.put_file(local, os.fspath(path))
    return
  path = real(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    _apply_umask(pathlib.Path(tmp))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
  with file(path) as f:
    json.dump(obj, f, indent=indent)
    f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
  with file(path) as f:
    f.write(text)


def check_replaceable(path: str | os.PathLike, *, overwrite: bool,
                      same_kind: Optional[Callable[[pathlib.Path], Optional[str]]] = None,
                      flag: str = "--overwrite") -> None:
  """Raise FileExistsError unless `path` is absent, an empty directory, or may be replaced.

  `same_kind(path)` returns None when the existing directory is of the kind being written
  (an export over an export), else the reason it is not; without it nothing non-empty is
  ever replaced. A bucket prefix must hold no objects (see `directory`).
  """
  if storage.is_remote(path):
    _check_empty_prefix(os.fspath(path))
    return
  path = real(path)
  if not os.path.lexists(path):
    return
  if not path.is_dir():
    raise FileExistsError(f"{path} exists and is not a directory; refusing to replace it")
  if not any(path.iterdir()):
    return
  if not overwrite:
    hint = (f" (pass {flag} to replace a directory of the same kind)" if same_kind is not None
            else "; choose a new path")
    raise FileExistsError(f"{path} exists and is not empty; refusing to replace it{hint}")
  why_not = "nothing may replace it" if same_kind is None else same_kind(path)
  if why_not:
    raise FileExistsError(f"{path} is not a directory this command wrote ({why_not}); "
                          f"refusing to replace it even with {flag}")


@contextlib.contextmanager
def directory(path: str | os.PathLike, *, overwrite: bool = False,
              same_kind: Optional[Callable[[pathlib.Path], Optional[str]]] = None,
              flag: str = "--overwrite", marker: str = "") -> Iterator[pathlib.Path]:
  """Yield a temp directory beside `path`; on a clean exit it becomes `path`.

  For a bucket URL the temp directory is local and is uploaded on a clean exit, `marker` (the
  file a reader looks for first) last; a prefix that holds objects is never written into
  (a bucket cannot swap a directory whole, so --overwrite does not apply there).

  The check (`check_replaceable`) runs before any work and again before the swap; an
  existing directory that may be replaced is moved aside, the new one renamed in, and only
  then the old one deleted. On an exception the temp directory is removed and `path` is
  untouched.
  """
  if storage.is_remote(path):
    with _bucket_directory(os.fspath(path), marker) as tmp:
      yield tmp
    return
  path = real(path)
  check_replaceable(path, overwrite=overwrite, same_kind=same_kind, flag=flag)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
    check_replaceable(path, overwrite=overwrite, same_kind=same_kind, flag=flag)
    _apply_umask(tmp)
    old = None
    if os.path.lexists(path):
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
      os.rmdir(old)
      os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _check_empty_prefix(url: str) -> None:
  p = storage.path(url)
  if p.exists() and (not p.is_dir() or any(True for _ in p.iterdir())):
    raise FileExistsError(f"{url} already holds objects; a bucket prefix is never written "
                          "into or replaced (it cannot be swapped whole): choose a new path "
                          "or delete it first")


@contextlib.contextmanager
def _bucket_directory(url: str, marker: str) -> Iterator[pathlib.Path]:
  _check_empty_prefix(url)
  with tempfile.TemporaryDirectory(prefix="hrm_jax-upload-") as folder:
    yield pathlib.Path(folder)
    _check_empty_prefix(url)
    try:
      storage.upload_tree(folder, url, last=[marker] if marker else [])
    except BaseException:
      storage.remove_tree(url)  # the objects this call uploaded, nothing else (checked empty)
      raise
