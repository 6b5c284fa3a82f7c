"""One training run per workdir: an advisory lock on `<workdir>/train.lock` for the run's life.

Two runs on one workdir would interleave their metrics, overwrite each other's config and
delete each other's checkpoints. The lock is `fcntl.flock` on an open file, which the kernel
drops when the process ends however it ends, so a crashed or killed run never blocks the
next. It belongs to the open file, so a second run in the same process is refused too; on
NFS, Linux carries flock over the server's byte-range locks, so it holds across hosts (a
filesystem without locks, e.g. Lustre mounted without `flock`, is an error). A multi-host job
locks once: process 0 holds the lock and tells the others, through JAX's coordination
service, whether the run may go on. The file stays after the run (it holds a lock only while
a process has it open); it names the last holder, which a refused run prints. A run that
stops before writing anything else (a config error) removes the lock file and the workdir it
created, leaving the disk as it was. A workdir in a bucket is locked on this machine only
(see `held`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import socket
import time
from typing import Iterator, Optional

import jax
from jax._src import distributed as jax_distributed

from hrm_jax import errors, storage

LOCK_FILE = "train.lock"
_KEY = "hrm_jax/workdir_lock/"
_CALLS = itertools.count()  # every process locks in the same order: one key per call


class WorkdirInUseError(errors.RunError):
  """Another process holds the workdir's lock."""


def _prepare(workdir: str) -> str:
  """The lock file's path; a workdir that cannot hold a run (a file, read-only) is a
  user error naming it."""
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise errors.UserError(f"--workdir={workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"--workdir={workdir}: cannot create it ({e.strerror})") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.UserError(f"--workdir={workdir} is not writable")
  return os.path.join(workdir, LOCK_FILE)


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or "unknown process"
  except OSError:
    return "unknown process"


def acquire(workdir: str) -> int:
  """The open, locked lock file's descriptor; WorkdirInUseError naming the holder if taken."""
  path = _prepare(workdir)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise errors.UserError(f"--workdir={workdir}: cannot open {path} ({e.strerror})") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
      raise errors.UserError(f"--workdir={workdir}: cannot lock {path} ({e.strerror}); the "
                             "filesystem may not support locks") from None
    raise WorkdirInUseError(
        f"--workdir={workdir} is in use by another training run ({_holder(path)}); wait for "
        "it to finish, stop it, or choose another --workdir") from None
  os.ftruncate(fd, 0)
  os.write(fd, (f"pid {os.getpid()} on host {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n").encode())
  return fd


def _share(message: Optional[str]) -> Optional[str]:
  """Process 0's outcome (None = locked) given to every process of a multi-process job."""
  client = jax_distributed.global_state.client
  if client is None or jax.process_count() == 1:
    return message
  key = f"{_KEY}{next(_CALLS)}"
  if jax.process_index() == 0:
    client.key_value_set(key, message or "")
    return message
  return client.blocking_key_value_get(key, 3600 * 1000) or None


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Hold `workdir`'s lock for the block (process 0); every process raises if it is taken.

  A bucket has no locks: a workdir there is locked in its local staging folder
  (`storage.staging`), which refuses a second run on the same machine only."""
  if storage.is_remote(workdir):
    storage.require(workdir)
    workdir = str(storage.staging(workdir, "runs"))
  fd, failure = None, None
  created = not os.path.lexists(workdir)
  fresh_lock = created or not os.path.lexists(os.path.join(workdir, LOCK_FILE))
  if jax.process_index() == 0:
    try:
      fd = acquire(workdir)
    except (errors.UserError, WorkdirInUseError) as e:
      failure = e
    shared = _share(None if failure is None else f"{type(failure).__name__}:{failure}")
  else:
    shared = _share(None)
  try:
    if failure is not None:
      raise failure
    if shared is not None:
      kind, _, message = shared.partition(":")
      raise (WorkdirInUseError if kind == WorkdirInUseError.__name__ else errors.UserError)(
          message)
    yield
  finally:
    if fd is not None:
      with contextlib.suppress(OSError):  # a workdir moved away meanwhile: nothing to tidy
        if fresh_lock and os.listdir(workdir) == [LOCK_FILE]:
          os.remove(os.path.join(workdir, LOCK_FILE))
          if created:
            os.rmdir(workdir)
      os.close(fd)  # closing the descriptor releases the lock
