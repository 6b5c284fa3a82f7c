"""Paths that are local files or objects in a bucket (`gs://`, `s3://`), one way to use both.

Every file hrm_jax reads or writes goes through `path()` (an `etils.epath` path, as orbax
uses: fsspec's gcsfs and s3fs behind `gs://` and `s3://`), so a URL is never mistaken for a
local directory name. Object stores have no rename and no append; what that changes:
- a whole-or-nothing write is one upload of a complete object (`put_file`), which both stores
  make visible only once it is complete;
- a directory is uploaded file by file, its marker file last (`upload_tree`);
- files that grow (metrics, TensorBoard events) are written to a local staging folder and
  uploaded from there (`staging`), see `hrm_jax.train.metrics`.
Servers are found the standard way: `AWS_ENDPOINT_URL` with the usual AWS credential and
region variables for S3, `STORAGE_EMULATOR_HOST` for a GCS emulator (`configure` passes it on
to tensorstore, which orbax writes arrays with). docs/multihost.md#object-storage has the
commands and credentials.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Sequence
from urllib import parse

from etils import epath

from hrm_jax import errors

EXTRAS = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", "s3")}  # scheme -> (fsspec module, extra)
CACHE_ENV = "HRM_JAX_CACHE"  # where staged and cached copies of remote files live


class MissingExtraError(errors.UserError, ImportError):
  """A bucket URL was given but its filesystem package is not installed."""


def scheme(path: Any) -> str | None:
  """'gs' or 's3' for a bucket URL, None for a local path."""
  text = os.fspath(path) if not isinstance(path, str) else path
  for name in EXTRAS:
    if text.startswith(f"{name}://"):
      return name
  return None


def is_remote(path: Any) -> bool:
  return scheme(path) is not None


@functools.cache
def configure() -> None:
  """Point the clients that do not read the standard variables at the same servers.

  tensorstore (orbax's array writer) reads neither STORAGE_EMULATOR_HOST nor, for its s3
  driver, AWS_ENDPOINT_URL; the first is passed on here, the second in `s3_kvstore`. With an
  emulator, gcsfs's bucket-type probe (a control-plane API emulators lack) is turned off.
  fsspec's cache of directory listings is turned off for the buckets.
  """
  try:  # listings are read fresh: other processes and hosts write the same bucket
    import fsspec  # pylint: disable=g-import-not-at-top - with the optional extras only
    for protocol in ("gs", "gcs", "s3", "s3a"):
      fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
  except ImportError:
    pass
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    url = emulator if "://" in emulator else f"http://{emulator}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # no credentials
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def require(path: Any) -> None:
  """MissingExtraError naming the pip extra when `path`'s filesystem is not installed."""
  name = scheme(path)
  if name is None:
    return
  configure()
  module, extra = EXTRAS[name]
  try:
    __import__(module)
  except ImportError:
    raise MissingExtraError(f"{path}: reading or writing {name}:// needs {module}: "
                            f"pip install 'hrm_jax[{extra}]'") from None


def path(p: Any) -> epath.Path | pathlib.Path:
  """A bucket URL as an epath path, a local path absolute with `~` expanded."""
  if isinstance(p, epath.Path) and not isinstance(p, pathlib.Path):
    return p
  text = os.fspath(p)
  if is_remote(text):
    require(text)
    return epath.Path(text)
  return pathlib.Path(text).expanduser().absolute()


def join(base: Any, *names: str) -> str:
  """`os.path.join` that keeps a URL a URL."""
  if is_remote(base):
    return "/".join([os.fspath(base).rstrip("/"), *(n.strip("/") for n in names)])
  return os.path.join(os.path.expanduser(os.fspath(base)), *names)


def text(p: Any) -> str:
  """The path as a string: a URL stays as given, a local path absolute."""
  return str(path(p))


def split(url: str) -> tuple[str, str]:
  """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
  parts = parse.urlparse(url)
  return parts.netloc, parts.path.lstrip("/")


@functools.cache
def filesystem(name: str):
  """The fsspec filesystem of a scheme (one per process; both are thread-safe)."""
  import fsspec  # pylint: disable=g-import-not-at-top - an optional dependency's
  require(f"{name}://")
  return fsspec.filesystem(name)


def _fs_path(url: str) -> str:
  return url.split("://", 1)[1]


def read_ranges(url: str, starts: Sequence[int], stops: Sequence[int]) -> list[bytes]:
  """Bytes [start, stop) of one object for each pair, fetched concurrently (HTTP range
  requests by tensorstore's C++ client: no Python per request, the GIL free meanwhile); a
  local path is read with seeks."""
  if not is_remote(url):
    with open(url, "rb") as f:
      out = []
      for a, b in zip(starts, stops):
        f.seek(a)
        out.append(f.read(b - a))
      return out
  bucket, key = split(url)
  store = _kvstore(scheme(url), bucket)
  reads = [store.read(key, byte_range=slice(int(a), int(b))) for a, b in zip(starts, stops)]
  out = []
  for r in reads:
    result = r.result()
    if result.state != "value":
      raise FileNotFoundError(f"{url}: no such object")
    out.append(result.value)
  return out


@functools.cache
def _kvstore(name: str, bucket: str):
  """tensorstore's key-value store of a whole bucket (one per process, thread-safe)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top - only for buckets
  configure()
  spec = (s3_kvstore(f"s3://{bucket}/") if name == "s3"
          else {"driver": "gcs", "bucket": bucket, "path": ""})
  return ts.KvStore.open(spec).result()


def size(p: Any) -> int:
  return path(p).stat().length if is_remote(p) else os.path.getsize(path(p))


def put_file(local: Any, url: str) -> None:
  """Upload a local file as one object (multi-part for large files, which the store also
  shows only when complete)."""
  filesystem(scheme(url)).put_file(os.fspath(local), _fs_path(url))


def upload_tree(local: Any, url: str, last: Iterable[str] = ()) -> None:
  """Every file under the local folder `local` to the prefix `url`, the files named in `last`
  (relative paths, e.g. the marker a reader looks for) after all others."""
  root = pathlib.Path(local)
  files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
  final = [f for f in last if f in files]
  for name in [f for f in files if f not in final] + final:
    put_file(root / name, join(url, name))


def remove_tree(url: str) -> None:
  """Delete every object under a prefix (the caller created it)."""
  fs = filesystem(scheme(url))
  if fs.exists(_fs_path(url)):
    fs.rm(_fs_path(url), recursive=True)


def cache_root() -> pathlib.Path:
  """$HRM_JAX_CACHE, else ~/.cache/hrm_jax: local copies of remote files."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or
                      os.path.join(os.path.expanduser("~"), ".cache", "hrm_jax"))


def staging(url: str, kind: str) -> pathlib.Path:
  """A local folder standing for the remote folder `url` (for files written in pieces and
  uploaded whole): <cache>/<kind>/<scheme>/<bucket>/<key>."""
  bucket, key = split(url)
  folder = cache_root() / kind / scheme(url) / bucket / key
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def cached_copy(url: str) -> pathlib.Path:
  """A local copy of one object, downloaded once and again only when the object changes
  (its size and ETag/generation differ from the copy's record)."""
  info = filesystem(scheme(url)).info(_fs_path(url))
  stamp = {"size": int(info["size"]),
           "version": str(info.get("ETag") or info.get("etag") or info.get("generation")
                          or info.get("LastModified") or info.get("updated") or "")}
  bucket, key = split(url)
  local = cache_root() / "objects" / scheme(url) / bucket / key
  record = local.with_name(local.name + ".stamp.json")
  try:
    if json.loads(record.read_text()) == stamp and local.stat().st_size == stamp["size"]:
      return local
  except (OSError, ValueError):
    pass
  local.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
  os.close(fd)
  try:
    filesystem(scheme(url)).get_file(_fs_path(url), tmp)
    os.replace(tmp, local)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  record.write_text(json.dumps(stamp))
  return local


def s3_kvstore(url: str) -> dict[str, Any]:
  """tensorstore's kvstore spec of an s3:// prefix, at AWS_ENDPOINT_URL when set."""
  bucket, key = split(url)
  spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": key}
  endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
  if endpoint:
    spec["endpoint"] = endpoint
  region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
  if region:
    spec["aws_region"] = region
  if os.environ.get("AWS_ACCESS_KEY_ID"):  # keys in the environment: use them, and only them
    spec["aws_credentials"] = {"type": "environment"}
  return spec

