"""orbax checkpoints in a bucket: gs:// as orbax does it, s3:// taught to orbax here.

orbax 0.12.8 writes arrays through tensorstore and builds tensorstore's kvstore spec itself:
a gs:// directory gets the `gcs` driver, anything else the local `file` driver, so an
s3:// checkpoint would be written to a local folder named `s3:`. `enable_s3` makes orbax
give s3:// directories tensorstore's `s3` driver (endpoint and region from the standard AWS
variables, `storage.s3_kvstore`), by wrapping the three functions of orbax that choose the
driver; the wrapped versions are unchanged for every other path. The pin of orbax in
requirements.txt keeps these names stable; tests/storage_test.py saves and restores a
checkpoint on a local S3 server, so a change in orbax fails there, not silently.

On a bucket a checkpoint is committed by a marker file written last (orbax's COMMIT_FILE
mode, its default for gs://), never by renaming a directory (a bucket copies and deletes
every object to rename). In a bucket each array is its own zarr store (orbax's layout before
OCDBT) rather than one OCDBT database: OCDBT's manifest is updated with conditional writes,
which tensorstore's s3 driver does not promise and which the GCS emulator of the tests does
not implement (it fails with "Malformed StorageGeneration"), so the layout the tests exercise
is the one pods write. A train state has a few hundred arrays, so the file count is small.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from orbax.checkpoint import options as ocp_options
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

from hrm_jax import storage


@functools.cache
def enable_s3() -> None:
  """Route orbax's s3:// array paths to tensorstore's s3 driver (idempotent)."""
  use_gcs_driver, normalize, kvstore = (ts_utils._use_gcs_driver, ts_utils._normalize_path,  # pylint: disable=protected-access
                                        gcs_utils.get_kvstore_for_gcs)

  def _use_bucket_driver(directory: str) -> bool:
    return directory.startswith("s3://") or use_gcs_driver(directory)

  def _normalize_path(p: str) -> str:
    if p.startswith("s3://"):
      return "s3://" + os.path.normpath(p[len("s3://"):])
    return normalize(p)

  def _kvstore(ckpt_path: str) -> dict[str, Any]:
    if str(ckpt_path).startswith("s3://"):
      return storage.s3_kvstore(str(ckpt_path))
    return kvstore(ckpt_path)

  ts_utils._use_gcs_driver = _use_bucket_driver  # pylint: disable=protected-access
  ts_utils._normalize_path = _normalize_path  # pylint: disable=protected-access
  gcs_utils.get_kvstore_for_gcs = _kvstore


@functools.cache
def _quiet_merge_notice() -> None:
  logging.getLogger("absl").addFilter(_NoMergeNotice())


class _NoMergeNotice(logging.Filter):
  """orbax looks for OCDBT files to merge after every save, and warns when there are none,
  which is always so in a bucket (no OCDBT there)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("Skipping merge of OCDBT checkpoints" in message and "://" in message)


def directory(p: Any) -> str:
  """The checkpoint directory as orbax must be given it: a URL as is, a local path absolute."""
  if storage.is_remote(p):
    _quiet_merge_notice()
  if storage.scheme(p) == "s3":
    enable_s3()
  return storage.text(p)


def manager_options(p: Any) -> dict[str, Any]:
  """CheckpointManagerOptions fields for a directory at `p`: commit by marker file in a
  bucket (orbax chooses it for gs:// itself, not for s3://)."""
  if storage.is_remote(p):
    return {"atomicity_options": ocp_options.AtomicityOptions(
        mode=ocp_options.AtomicityMode.COMMIT_FILE)}
  return {}


def use_ocdbt(p: Any) -> bool:
  """OCDBT on local disks, not in buckets (see the module docstring)."""
  return not storage.is_remote(p)
