"""The data_io "sampled" directory (docs/reference.md#data-format): reader with validation, writer.

Layout: `metadata.json` ({tokenizer_info, max_seq_len = context + 1, total_length}),
`tokens.npy` (uint8/uint16/int32 by vocab size) and per epoch `epoch_{e}/{inst_start,
inst_len, resp_start, resp_len}.npy` (int64 spans into tokens.npy, in training order).
Metadata and index arrays are checked on open so that a bad directory fails before training,
with the file and field named, instead of deep inside a jitted step.

Token ids are checked once, not on every start of every host: the writer (and
`experiments/check_data.py --record`) leaves `token_check.json` ({bytes, dtype, min_id,
max_id}) beside tokens.npy; open trusts it while tokens.npy still has that size, and
otherwise reads nothing of tokens.npy (the pipeline checks each batch's ids as it builds it).
The writer streams: tokens are appended to tokens.npy as they come, so memory is bounded by
the chunk, not the corpus (the per-example index arrays stay in memory: 8 bytes each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hrm_jax import atomic, errors, storage

INDEX_FIELDS = ("inst_start", "inst_len", "resp_start", "resp_len")
TOKEN_DTYPES = (np.uint8, np.uint16, np.int32)
MIN_RESP_LEN = 2  # at least one content token + eoa (data_io's min_resp_length)
_SCAN_CHUNK = 1 << 24
_HEADER_READ = 4096  # bytes read to parse a .npy header (numpy writes at most 4 KiB usually)
TOKEN_CHECK = "token_check.json"  # the writer's record of the token id range
EXTRA_FILES = ("tokenizer.json", "tokenizer_info.json")  # what prepare_data copies in

log = logging.getLogger(__name__)


class DataError(errors.UserError, ValueError):
  """A data directory or input file is malformed; the message names the file and field."""


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def token_dtype(tokenizer_vocab: int) -> np.dtype:
  """data_io's choice: the smallest of uint8/uint16/int32 that holds every id."""
  if tokenizer_vocab <= np.iinfo(np.uint8).max:
    return np.dtype(np.uint8)
  if tokenizer_vocab <= np.iinfo(np.uint16).max:
    return np.dtype(np.uint16)
  return np.dtype(np.int32)


@dataclasses.dataclass(frozen=True)
class Examples:
  """One epoch's examples in training order: spans into tokens.npy, each [N] int64."""
  inst_start: np.ndarray
  inst_len: np.ndarray
  resp_start: np.ndarray
  resp_len: np.ndarray

  def __len__(self) -> int:
    return len(self.inst_len)

  @property
  def lengths(self) -> np.ndarray:
    """Model tokens per example [N]: instruction + response - 1 (autoregressive shift).
    Read in chunks, so a memory-mapped index is not pulled into memory whole."""
    out = np.empty(len(self), np.int64)
    for start, inst, resp in zip(*(chunks(a) for a in (None, self.inst_len, self.resp_len))):
      out[start:start + len(inst)] = inst + resp - 1
    return out

  def take(self, idx: np.ndarray) -> "Examples":
    return Examples(*(getattr(self, f)[idx] for f in INDEX_FIELDS))


CHUNK = 1 << 20  # index entries read at a time


def chunks(arr: np.ndarray | None, size: int = CHUNK):
  """arr[i:i + size] for i = 0, size, ...; for a memory map, read from its file instead, so
  that scanning a whole index leaves none of it resident. With arr None: the offsets i."""
  if arr is None:
    yield from itertools.count(0, size)
    return
  if isinstance(arr, np.memmap) and arr.filename:
    with open(arr.filename, "rb") as f:
      for i in range(0, len(arr), size):
        f.seek(arr.offset + i * arr.dtype.itemsize)
        yield np.fromfile(f, arr.dtype, min(size, len(arr) - i))
    return
  for i in range(0, len(arr), size):
    yield arr[i:i + size]


class RemoteTokens:
  """tokens.npy in a bucket as a read-only 1-D array: its length and dtype from the .npy
  header, slices by HTTP range requests, nothing downloaded up front."""

  ndim = 1

  def __init__(self, url: str):
    self.url = url
    head = storage.read_ranges(url, [0], [min(_HEADER_READ, storage.size(url))])[0]
    f = io.BytesIO(head)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
    if read_header is None:
      raise _fail(url, "tokens", "unsupported .npy format version")
    shape, fortran, dtype = read_header(f)
    if len(shape) != 1 or fortran:
      raise _fail(url, "tokens", f"must be 1-D, has shape {shape}")
    self.dtype, self.shape, self.offset = np.dtype(dtype), tuple(shape), f.tell()

  def __len__(self) -> int:
    return self.shape[0]

  def _bounds(self, start: int, stop: int) -> tuple[int, int]:
    size = self.dtype.itemsize
    return self.offset + start * size, self.offset + stop * size

  def __getitem__(self, key: slice) -> np.ndarray:
    if not isinstance(key, slice) or key.step not in (None, 1):
      raise TypeError(f"{self.url}: only contiguous slices are read from a bucket")
    start, stop, _ = key.indices(len(self))
    return self.read_spans([start], [max(0, stop - start)])[0]

  def read_spans(self, starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
    """tokens[s:s + n] for each span, in one batch of concurrent range requests; spans that
    touch (an instruction and its response) are fetched as one range."""
    order = np.argsort(starts, kind="stable")
    groups: list[list[int]] = []  # [first token, end token, span indices...]
    for i in order.tolist():
      s, n = int(starts[i]), int(lengths[i])
      if groups and s <= groups[-1][1]:
        groups[-1][1] = max(groups[-1][1], s + n)
        groups[-1].append(i)
      else:
        groups.append([s, s + n, i])
    ranges = [self._bounds(g[0], g[1]) for g in groups]
    blobs = storage.read_ranges(self.url, [a for a, _ in ranges], [b for _, b in ranges])
    out: list[np.ndarray] = [np.empty(0, self.dtype)] * len(starts)
    for g, blob in zip(groups, blobs):
      tokens = np.frombuffer(blob, self.dtype)
      for i in g[2:]:
        s = int(starts[i]) - g[0]
        out[i] = tokens[s:s + int(lengths[i])]
    return out


def read_spans(tokens: Any, starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
  """tokens[s:s + n] for each (s, n): slices of a memory map, or `RemoteTokens.read_spans`."""
  if isinstance(tokens, RemoteTokens):
    return tokens.read_spans(starts, lengths)
  return [tokens[s:s + n] for s, n in zip(starts, lengths)]


def concat_examples(inst: Sequence[Sequence[int]], resp: Sequence[Sequence[int]]
                    ) -> tuple[np.ndarray, Examples]:
  """Token lists -> (tokens [T] int64, spans): each instruction then its response, in order."""
  inst_len = np.array([len(i) for i in inst], np.int64)
  resp_len = np.array([len(o) for o in resp], np.int64)
  starts = np.concatenate([[0], np.cumsum(inst_len + resp_len)[:-1]]).astype(np.int64)
  tokens = np.fromiter((t for i, o in zip(inst, resp) for t in (*i, *o)), np.int64,
                       count=int(inst_len.sum() + resp_len.sum()))
  return tokens, Examples(starts, inst_len, starts + inst_len, resp_len)


class SampledData:
  """A validated data_io directory; tokens stay memory-mapped."""

  def __init__(self, path: str, metadata: dict[str, Any], tokens: np.ndarray,
               epochs: list[Examples], dropped: list[int], id_limit: int | None = None,
               ids_checked: bool = False):
    self.path = path
    self.metadata = metadata
    self.tokens = tokens
    self._epochs = epochs
    self.dropped = dropped  # per epoch: examples dropped for an empty/1-token response
    # Every token id must be below id_limit; ids_checked: verified for the whole file at open
    # (by dtype or by the writer's record), else only per batch by the pipeline.
    self.id_limit = (int(metadata["tokenizer_info"]["vocab_size"]) if id_limit is None
                     else id_limit)
    self.ids_checked = ids_checked

  @property
  def tokenizer_info(self) -> dict[str, Any]:
    return self.metadata["tokenizer_info"]

  @property
  def num_epochs(self) -> int:
    return len(self._epochs)

  @property
  def total_length(self) -> int:
    return int(self.metadata["total_length"])

  @property
  def max_seq_len(self) -> int:
    """The longest example in model tokens (metadata max_seq_len minus the AR shift)."""
    return int(self.metadata["max_seq_len"]) - 1

  @property
  def vocab_size(self) -> int:
    """The model vocabulary: round_up(tokenizer vocab, 256), as the reference derives it."""
    return round_up(int(self.tokenizer_info["vocab_size"]), 256)

  def examples(self, epoch: int) -> Examples:
    if not 0 <= epoch < self.num_epochs:
      raise DataError(f"{self.path}: epoch {epoch} requested, directory has epoch_0.."
                      f"epoch_{self.num_epochs - 1}")
    return self._epochs[epoch]


def _fail(file: str, field: str, why: str) -> DataError:
  return DataError(f"{file}: field '{field}': {why}")


def _read_metadata(path: str) -> dict[str, Any]:
  file = storage.join(path, "metadata.json")
  if not storage.path(file).is_file():
    raise DataError(f"{file}: missing (not a data_io sampled directory)")
  try:
    meta = json.loads(storage.path(file).read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{file}: not valid JSON ({e})") from e
  if not isinstance(meta, dict):
    raise DataError(f"{file}: top level must be an object")
  info = meta.get("tokenizer_info")
  if not isinstance(info, dict):
    raise _fail(file, "tokenizer_info", "missing or not an object")
  for key in ("tokenizer_path", "boq", "eoq", "eoa"):
    if not isinstance(info.get(key), str):
      raise _fail(file, f"tokenizer_info.{key}", "missing or not a string")
  if not isinstance(info.get("condition_mapping"), dict):
    raise _fail(file, "tokenizer_info.condition_mapping", "missing or not an object")
  for name, value, low in (("tokenizer_info.vocab_size", info.get("vocab_size"), 2),
                           ("max_seq_len", meta.get("max_seq_len"), 2),
                           ("total_length", meta.get("total_length"), 0)):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise _fail(file, name, f"must be an integer >= {low}, got {value!r}")
  return meta


def _load_array(file: str, field: str) -> np.ndarray:
  """The .npy file memory-mapped; in a bucket, tokens.npy is read by byte ranges
  (`RemoteTokens`) and an index array from a local cached copy."""
  if not storage.path(file).is_file():
    raise _fail(file, field, "file missing")
  try:
    if storage.is_remote(file):
      if field == "tokens":
        return RemoteTokens(file)
      file = str(storage.cached_copy(file))
    arr = np.load(file, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError) as e:
    raise _fail(file, field, f"not a readable .npy array ({e})") from e
  if arr.ndim != 1:
    raise _fail(file, field, f"must be 1-D, has shape {arr.shape}")
  return arr


def _check_dtype(file: str, tokens: np.ndarray) -> None:
  if tokens.dtype not in [np.dtype(d) for d in TOKEN_DTYPES]:
    raise _fail(file, "tokens", f"dtype {tokens.dtype}, expected one of uint8/uint16/int32")


def dtype_bounds_ids(dtype: np.dtype, vocab: int) -> bool:
  """Whether every id the dtype can represent is inside [0, vocab) (nothing to check)."""
  return np.iinfo(dtype).max < vocab and np.iinfo(dtype).min >= 0


def scan_tokens(tokens: np.ndarray, vocab: int) -> tuple[int, int, int | None]:
  """Reads all of `tokens` in chunks: (min id, max id, index of the first id outside
  [0, vocab) or None). O(tokens): for check_data.py, never on a training start."""
  lo_id, hi_id = 0, -1
  for lo in range(0, len(tokens), _SCAN_CHUNK):
    chunk = np.asarray(tokens[lo:lo + _SCAN_CHUNK])
    lo_id = int(chunk.min()) if lo == 0 else min(lo_id, int(chunk.min()))
    hi_id = max(hi_id, int(chunk.max()))
    bad = np.flatnonzero((chunk < 0) | (chunk >= vocab))
    if bad.size:
      return lo_id, hi_id, lo + int(bad[0])
  return lo_id, hi_id, None


def token_record(tokens_file: str, dtype: np.dtype, min_id: int, max_id: int) -> dict[str, Any]:
  """The `token_check.json` record: the id range of tokens.npy while it has this size."""
  return {"file": "tokens.npy", "bytes": storage.size(tokens_file), "dtype": dtype.name,
          "min_id": int(min_id), "max_id": int(max_id)}


def read_token_record(path: str, tokens: np.ndarray) -> dict[str, Any] | None:
  """The record of `path`, or None when absent, unreadable or stale (size or dtype differ)."""
  file = storage.join(path, TOKEN_CHECK)
  try:
    rec = json.loads(storage.path(file).read_text())
    fresh = (rec["bytes"] == storage.size(storage.join(path, "tokens.npy"))
             and rec["dtype"] == tokens.dtype.name)
    int(rec["min_id"]), int(rec["max_id"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return rec if fresh else None


def _check_tokens(path: str, file: str, tokens: np.ndarray, vocab: int) -> bool:
  """Whether all ids are known to be in [0, vocab) without reading tokens.npy (dtype or
  record); raises when the record says an id is outside."""
  _check_dtype(file, tokens)
  if dtype_bounds_ids(tokens.dtype, vocab):
    return True
  rec = read_token_record(path, tokens)
  if rec is None:
    log.info("%s: no current %s; token ids are checked per batch (run experiments/"
             "check_data.py %s --record to check them all once)", file, TOKEN_CHECK, path)
    return False
  for value in (rec["min_id"], rec["max_id"]):
    if not 0 <= value < vocab:
      raise _fail(file, "tokens", f"token id {value} (recorded in {TOKEN_CHECK}) is outside "
                  f"the vocabulary [0, {vocab}); experiments/check_data.py {path} finds where")
  return True


def _load_epoch(path: str, epoch: int, n_tokens: int, max_example: int,
                limit_field: str) -> tuple[Examples, int]:
  folder = storage.join(path, f"epoch_{epoch}")
  files = {f: storage.join(folder, f"{f}.npy") for f in INDEX_FIELDS}
  arrays = {f: _load_array(files[f], f) for f in INDEX_FIELDS}
  for f, a in arrays.items():
    if not np.issubdtype(a.dtype, np.integer):
      raise _fail(files[f], f, f"dtype {a.dtype}, expected int64")
  n = len(arrays["inst_start"])
  for f, a in arrays.items():
    if len(a) != n:
      raise _fail(files[f], f, f"has {len(a)} entries but inst_start.npy has {n} "
                  "(index arrays of unequal length)")
  # The index stays memory-mapped (int64, as data_io writes it); it is checked in chunks read
  # from the files, so opening a corpus of tens of millions of examples keeps none of it.
  a = {f: v if v.dtype == np.int64 else np.asarray(v, np.int64) for f, v in arrays.items()}
  keep_parts = []
  for start, inst_s, inst_l, resp_s, resp_l in zip(
      *(chunks(x) for x in (None, *(a[f] for f in INDEX_FIELDS)))):
    for kind, first, length in (("inst", inst_s, inst_l), ("resp", resp_s, resp_l)):
      s_name, l_name = f"{kind}_start", f"{kind}_len"
      for file, f, bad in ((files[s_name], s_name, first < 0),
                           (files[l_name], l_name, length < 0),
                           (files[s_name], f"{s_name}+{l_name}", first + length > n_tokens)):
        if bad.any():
          i = int(np.argmax(bad))
          raise _fail(file, f, f"example {start + i}: span [{first[i]}, "
                      f"{first[i] + length[i]}) is outside tokens.npy (length {n_tokens})")
    too_long = inst_l + resp_l - 1 > max_example
    if too_long.any():
      i = int(np.argmax(too_long))
      raise _fail(files["resp_len"], "inst_len+resp_len",
                  f"example {start + i} has {inst_l[i] + resp_l[i] - 1} model tokens, longer "
                  f"than {limit_field} allows ({max_example})")
    # The reference crashed on zero-length causal segments: drop such examples, and empty
    # instructions (no prefix to predict the first response token from).
    keep_parts.append((resp_l >= MIN_RESP_LEN) & (inst_l >= 1))
  keep = np.concatenate(keep_parts) if keep_parts else np.ones(0, bool)
  dropped = int(n - keep.sum())
  if not dropped:
    return Examples(*(a[f] for f in INDEX_FIELDS)), 0
  log.warning("%s: dropped %d of %d examples with an empty instruction or a response "
              "shorter than %d tokens", folder, dropped, n, MIN_RESP_LEN)
  return Examples(*(a[f][keep] for f in INDEX_FIELDS)), dropped


def open_sampled(path: str, *, epochs: int | None = None, vocab_size: int | None = None,
                 max_seq_len: int | None = None) -> SampledData:
  """Open and validate a data_io sampled directory.

  epochs: how many epoch folders training needs (default: all present). vocab_size: every
  token id must be below it (default: the tokenizer vocab of the metadata); known from the
  dtype or a current token_check.json without reading tokens.npy, else left to the pipeline's
  per-batch check (`ids_checked` says which). max_seq_len: the
  model context; no example may need more (default: metadata max_seq_len - 1).
  """
  path = os.fspath(path)
  storage.require(path)
  meta = _read_metadata(path)
  meta_file = storage.join(path, "metadata.json")
  tok_file = storage.join(path, "tokens.npy")
  tokens = _load_array(tok_file, "tokens")
  vocab = int(meta["tokenizer_info"]["vocab_size"]) if vocab_size is None else vocab_size
  ids_checked = _check_tokens(path, tok_file, tokens, vocab)

  limit, limit_field = meta["max_seq_len"] - 1, f"{meta_file} max_seq_len {meta['max_seq_len']}"
  if max_seq_len is not None and max_seq_len < limit:
    limit, limit_field = max_seq_len, f"max_seq_len={max_seq_len}"

  found = 0
  while storage.path(storage.join(path, f"epoch_{found}")).is_dir():
    found += 1
  wanted = found if epochs is None else epochs
  if wanted < 1 or found < wanted:
    raise DataError(f"{storage.join(path, f'epoch_{found}')}: field 'epoch_{found}': training "
                    f"asks for {wanted} epoch(s) but the directory has {found} "
                    f"(epoch_0..epoch_{found - 1}); regenerate with more epochs")
  loaded = [_load_epoch(path, e, len(tokens), limit, limit_field) for e in range(wanted)]
  return SampledData(path, meta, tokens, [ex for ex, _ in loaded], [d for _, d in loaded],
                     id_limit=vocab, ids_checked=ids_checked)


def sampled_kind(path: pathlib.Path, inputs: Sequence[str] = ()) -> str | None:
  """None when `path` is a sampled directory this writer made (so --overwrite may replace
  it): metadata.json, tokens.npy, epoch_*/ of index arrays and nothing but the writer's own
  extras, holding none of `inputs`; else why it is not."""
  root = os.path.realpath(path)
  for f in inputs:
    real = os.path.realpath(f)
    if real == root or real.startswith(root + os.sep):
      return f"it holds the input {f}"
  names = set(os.listdir(path))
  for need in ("metadata.json", "tokens.npy"):
    if need not in names:
      return f"it has no {need}"
  for name in sorted(names - {"metadata.json", "tokens.npy", TOKEN_CHECK, *EXTRA_FILES}):
    folder = path / name
    if not (name.startswith("epoch_") and name[6:].isdigit() and folder.is_dir()
            and not folder.is_symlink()):
      return f"it holds {name}, which the writer does not make"
    extra = set(os.listdir(folder)) - {f"{f}.npy" for f in INDEX_FIELDS}
    if extra:
      return f"it holds {name}/{sorted(extra)[0]}, which the writer does not make"
  return None


def _npy_header(dtype: np.dtype, n: int) -> bytes:
  """The .npy header np.save writes for a 1-D [n] array of `dtype` (numpy pads it so that its
  length does not depend on n, which lets tokens.npy be written before n is known)."""
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
            "shape": (n,)})
  return buf.getvalue()


class SampledWriter:
  """Appends examples to a sampled directory under construction (see `sampled_writer`)."""

  def __init__(self, folder: pathlib.Path, vocab: int):
    self.folder, self.vocab = folder, vocab
    self.dtype = token_dtype(vocab)
    self.tokens_file = str(folder / "tokens.npy")
    self._header_len = len(_npy_header(self.dtype, 0))
    self._f = open(self.tokens_file, "wb")
    self._f.write(b"\0" * self._header_len)
    self._inst: list[np.ndarray] = []
    self._resp: list[np.ndarray] = []
    self.num_tokens, self.min_id, self.max_id = 0, 0, -1
    self.spans: Examples | None = None  # explicit spans into tokens.npy (write_sampled)
    self.selection: np.ndarray | None = None  # appended examples to index, repeats allowed

  def append(self, tokens: np.ndarray, inst_len: np.ndarray, resp_len: np.ndarray) -> None:
    """tokens: [sum(inst_len + resp_len)] ids, each example's instruction then its response;
    inst_len, resp_len: [n] per example."""
    inst_len, resp_len = np.asarray(inst_len, np.int64), np.asarray(resp_len, np.int64)
    if int(inst_len.sum() + resp_len.sum()) != np.size(tokens):
      raise ValueError(f"{np.size(tokens)} tokens for examples of {int(inst_len.sum())} + "
                       f"{int(resp_len.sum())}")
    self.append_tokens(tokens)
    self._inst.append(inst_len)
    self._resp.append(resp_len)

  def append_tokens(self, tokens: np.ndarray) -> None:
    """Appends ids to tokens.npy (checked against the vocabulary, range recorded)."""
    tokens = np.asarray(tokens)
    if tokens.size:
      lo, hi = int(tokens.min()), int(tokens.max())
      if lo < 0 or hi >= self.vocab:
        raise DataError(f"{self.tokens_file}: token id {lo if lo < 0 else hi} is outside the "
                        f"tokenizer vocabulary [0, {self.vocab})")
      self.min_id = lo if self.num_tokens == 0 else min(self.min_id, lo)
      self.max_id = max(self.max_id, hi)
    self._f.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
    self.num_tokens += tokens.size

  def finish(self) -> Examples:
    """Fixes up the tokens.npy header; returns the examples' spans: `self.spans` when set,
    else the appended examples in order (`self.selection` of them when set)."""
    header = _npy_header(self.dtype, self.num_tokens)
    if len(header) != self._header_len:
      raise AssertionError("numpy's .npy header length changed with the array length")
    self._f.seek(0)
    self._f.write(header)
    self._f.close()
    if self.spans is not None:
      return self.spans
    inst_len = np.concatenate([np.zeros(0, np.int64), *self._inst])
    resp_len = np.concatenate([np.zeros(0, np.int64), *self._resp])
    starts = np.concatenate([[0], np.cumsum(inst_len + resp_len)[:-1]]).astype(np.int64)
    ex = Examples(starts[:len(inst_len)], inst_len, starts[:len(inst_len)] + inst_len, resp_len)
    return ex if self.selection is None else ex.take(self.selection)

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()


@contextlib.contextmanager
def sampled_writer(out: str, *, tokenizer_info: Mapping[str, Any], max_seq_len: int,
                   epochs: int, seed: int = 0, extra_files: Mapping[str, str] | None = None,
                   extra_json: Mapping[str, Any] | None = None,
                   epoch_orders: Iterable[np.ndarray] | None = None, overwrite: bool = False,
                   inputs: Sequence[str] = ()) -> Iterator[SampledWriter]:
  """Build a sampled directory at `out` from appended examples; it appears whole on a clean
  exit, or not at all.

  An existing non-empty `out` is refused unless `overwrite`, and even then only a sampled
  directory holding none of `inputs` is replaced (`sampled_kind`); files follow the umask.
  Epoch e lists the examples in the order of a Philox(seed) permutation, as the reference SFT
  script does, unless `epoch_orders` gives them. max_seq_len: metadata value (context + 1).
  extra_files: name -> source path to copy; extra_json: name -> object written as JSON.
  """
  with atomic.directory(out, overwrite=overwrite, marker="metadata.json",
                        same_kind=functools.partial(sampled_kind, inputs=inputs)) as tmp:
    for name, src in (extra_files or {}).items():
      shutil.copyfile(src, tmp / name)
    writer = SampledWriter(tmp, int(tokenizer_info["vocab_size"]))
    try:
      yield writer
      examples = writer.finish()
    finally:
      writer.close()
    if not len(examples):
      raise DataError(f"{out}: no examples to write")
    for name, obj in (extra_json or {}).items():
      with open(tmp / name, "w") as f:
        json.dump(obj, f, indent=1)
    n = len(examples)
    if epoch_orders is None:
      rng = np.random.Generator(np.random.Philox(seed=seed))
      epoch_orders = (rng.permutation(n) for _ in range(epochs))
    for e, order in enumerate(epoch_orders):
      folder = tmp / f"epoch_{e}"
      folder.mkdir()
      for f in INDEX_FIELDS:
        np.save(folder / f"{f}.npy", getattr(examples, f)[order])
    meta = {"tokenizer_info": dict(tokenizer_info), "vocab_size": None,
            "max_seq_len": int(max_seq_len),
            "total_length": int(np.sum(examples.inst_len) + np.sum(examples.resp_len))}
    with open(tmp / "metadata.json", "w") as f:
      json.dump(meta, f, indent=1)
    with open(tmp / TOKEN_CHECK, "w") as f:
      json.dump(token_record(writer.tokens_file, writer.dtype, writer.min_id, writer.max_id), f,
                indent=1)


def write_sampled(out: str, *, tokens: np.ndarray, examples: Examples,
                  tokenizer_info: Mapping[str, Any], max_seq_len: int, epochs: int,
                  seed: int = 0, extra_files: Mapping[str, str] | None = None,
                  epoch_orders: Iterable[np.ndarray] | None = None,
                  extra_json: Mapping[str, Any] | None = None, overwrite: bool = False,
                  inputs: Sequence[str] = ()) -> None:
  """Write a sampled directory from in-memory arrays (see `sampled_writer`).

  tokens: [T] ids, written whole; examples: spans into them.
  """
  with sampled_writer(out, tokenizer_info=tokenizer_info, max_seq_len=max_seq_len,
                      epochs=epochs, seed=seed, extra_files=extra_files, extra_json=extra_json,
                      epoch_orders=epoch_orders, overwrite=overwrite, inputs=inputs) as w:
    w.append_tokens(tokens)
    w.spans = Examples(*(np.asarray(getattr(examples, f), np.int64) for f in INDEX_FIELDS))
