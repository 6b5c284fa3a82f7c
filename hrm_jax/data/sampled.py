"""The data_io "sampled" directory (REFERENCE section 5): reader with validation, and writer.

Layout: `metadata.json` ({tokenizer_info, max_seq_len = context + 1, total_length}),
`tokens.npy` (uint8/uint16/int32 by vocab size) and per epoch `epoch_{e}/{inst_start,
inst_len, resp_start, resp_len}.npy` (int64 spans into tokens.npy, in training order).
Everything is checked on open so that a bad directory fails before training, with the file and
field named, instead of deep inside a jitted step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

INDEX_FIELDS = ("inst_start", "inst_len", "resp_start", "resp_len")
TOKEN_DTYPES = (np.uint8, np.uint16, np.int32)
MIN_RESP_LEN = 2  # at least one content token + eoa (data_io's min_resp_length)
_SCAN_CHUNK = 1 << 24

log = logging.getLogger(__name__)


class DataError(ValueError):
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
    """Model tokens per example [N]: instruction + response - 1 (autoregressive shift)."""
    return self.inst_len + self.resp_len - 1

  def take(self, idx: np.ndarray) -> "Examples":
    return Examples(*(getattr(self, f)[idx] for f in INDEX_FIELDS))


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
               epochs: list[Examples], dropped: list[int]):
    self.path = path
    self.metadata = metadata
    self.tokens = tokens
    self._epochs = epochs
    self.dropped = dropped  # per epoch: examples dropped for an empty/1-token response

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
  file = os.path.join(path, "metadata.json")
  if not os.path.isfile(file):
    raise DataError(f"{file}: missing (not a data_io sampled directory)")
  try:
    with open(file) as f:
      meta = json.load(f)
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
  if not os.path.isfile(file):
    raise _fail(file, field, "file missing")
  try:
    arr = np.load(file, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError) as e:
    raise _fail(file, field, f"not a readable .npy array ({e})") from e
  if arr.ndim != 1:
    raise _fail(file, field, f"must be 1-D, has shape {arr.shape}")
  return arr


def _check_tokens(file: str, tokens: np.ndarray, vocab: int) -> None:
  if tokens.dtype not in [np.dtype(d) for d in TOKEN_DTYPES]:
    raise _fail(file, "tokens", f"dtype {tokens.dtype}, expected one of uint8/uint16/int32")
  if np.iinfo(tokens.dtype).max < vocab and np.iinfo(tokens.dtype).min >= 0:
    return  # every representable id is in the vocabulary: no scan needed
  for lo in range(0, len(tokens), _SCAN_CHUNK):
    chunk = np.asarray(tokens[lo:lo + _SCAN_CHUNK])
    bad = np.flatnonzero((chunk < 0) | (chunk >= vocab))
    if bad.size:
      i = lo + int(bad[0])
      raise _fail(file, "tokens", f"token id {int(tokens[i])} at index {i} is outside the "
                  f"vocabulary [0, {vocab})")


def _load_epoch(path: str, epoch: int, n_tokens: int, max_example: int,
                limit_field: str) -> tuple[Examples, int]:
  folder = os.path.join(path, f"epoch_{epoch}")
  files = {f: os.path.join(folder, f"{f}.npy") for f in INDEX_FIELDS}
  arrays = {f: _load_array(files[f], f) for f in INDEX_FIELDS}
  for f, a in arrays.items():
    if not np.issubdtype(a.dtype, np.integer):
      raise _fail(files[f], f, f"dtype {a.dtype}, expected int64")
  n = len(arrays["inst_start"])
  for f, a in arrays.items():
    if len(a) != n:
      raise _fail(files[f], f, f"has {len(a)} entries but inst_start.npy has {n} "
                  "(index arrays of unequal length)")
  a = {f: np.asarray(v, np.int64) for f, v in arrays.items()}
  for kind in ("inst", "resp"):
    start, length = a[f"{kind}_start"], a[f"{kind}_len"]
    s_name, l_name = f"{kind}_start", f"{kind}_len"
    for file, f, bad in ((files[s_name], s_name, start < 0), (files[l_name], l_name, length < 0),
                         (files[s_name], f"{s_name}+{l_name}", start + length > n_tokens)):
      if bad.any():
        i = int(np.argmax(bad))
        raise _fail(file, f, f"example {i}: span [{start[i]}, {start[i] + length[i]}) is "
                    f"outside tokens.npy (length {n_tokens})")
  too_long = a["inst_len"] + a["resp_len"] - 1 > max_example
  if too_long.any():
    i = int(np.argmax(too_long))
    raise _fail(files["resp_len"], "inst_len+resp_len",
                f"example {i} has {a['inst_len'][i] + a['resp_len'][i] - 1} model tokens, longer "
                f"than {limit_field} allows ({max_example})")
  # The reference crashed on zero-length causal segments: drop such examples, and empty
  # instructions (no prefix to predict the first response token from).
  keep = (a["resp_len"] >= MIN_RESP_LEN) & (a["inst_len"] >= 1)
  dropped = int(n - keep.sum())
  if dropped:
    log.warning("%s: dropped %d of %d examples with an empty instruction or a response "
                "shorter than %d tokens", folder, dropped, n, MIN_RESP_LEN)
  return Examples(*(a[f][keep] for f in INDEX_FIELDS)), dropped


def open_sampled(path: str, *, epochs: int | None = None, vocab_size: int | None = None,
                 max_seq_len: int | None = None) -> SampledData:
  """Open and validate a data_io sampled directory.

  epochs: how many epoch folders training needs (default: all present). vocab_size: every
  token id must be below it (default: the tokenizer vocab of the metadata). max_seq_len: the
  model context; no example may need more (default: metadata max_seq_len - 1).
  """
  path = os.fspath(path)
  meta = _read_metadata(path)
  meta_file = os.path.join(path, "metadata.json")
  tok_file = os.path.join(path, "tokens.npy")
  tokens = _load_array(tok_file, "tokens")
  vocab = int(meta["tokenizer_info"]["vocab_size"]) if vocab_size is None else vocab_size
  _check_tokens(tok_file, tokens, vocab)

  limit, limit_field = meta["max_seq_len"] - 1, f"{meta_file} max_seq_len {meta['max_seq_len']}"
  if max_seq_len is not None and max_seq_len < limit:
    limit, limit_field = max_seq_len, f"max_seq_len={max_seq_len}"

  found = 0
  while os.path.isdir(os.path.join(path, f"epoch_{found}")):
    found += 1
  wanted = found if epochs is None else epochs
  if wanted < 1 or found < wanted:
    raise DataError(f"{os.path.join(path, f'epoch_{found}')}: field 'epoch_{found}': training "
                    f"asks for {wanted} epoch(s) but the directory has {found} "
                    f"(epoch_0..epoch_{found - 1}); regenerate with more epochs")
  loaded = [_load_epoch(path, e, len(tokens), limit, limit_field) for e in range(wanted)]
  return SampledData(path, meta, tokens, [ex for ex, _ in loaded], [d for _, d in loaded])


def _replace_dir(tmp: str, out: str) -> None:
  """Move a finished directory into place; an existing `out` is swapped out, then deleted."""
  old = None
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
  os.rename(tmp, out)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_sampled(out: str, *, tokens: np.ndarray, examples: Examples,
                  tokenizer_info: Mapping[str, Any], max_seq_len: int, epochs: int,
                  seed: int = 0, extra_files: Mapping[str, str] | None = None,
                  epoch_orders: Iterable[np.ndarray] | None = None,
                  extra_json: Mapping[str, Any] | None = None) -> None:
  """Write a sampled directory atomically (temp dir + rename; an interrupt leaves no output).

  tokens: [T] ids; examples: spans into them; max_seq_len: metadata value (context + 1).
  Epoch e lists the examples in the order of a Philox(seed) permutation, as the reference SFT
  script does, unless `epoch_orders` gives them. extra_files: name -> source path to copy;
  extra_json: name -> object written as JSON beside metadata.json.
  """
  out = os.path.abspath(os.fspath(out))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
  try:
    dtype = token_dtype(int(tokenizer_info["vocab_size"]))
    np.save(os.path.join(tmp, "tokens.npy"), np.asarray(tokens).astype(dtype, copy=False))
    for name, src in (extra_files or {}).items():
      shutil.copyfile(src, os.path.join(tmp, name))
    for name, obj in (extra_json or {}).items():
      with open(os.path.join(tmp, name), "w") as f:
        json.dump(obj, f, indent=1)
    n = len(examples)
    if epoch_orders is None:
      rng = np.random.Generator(np.random.Philox(seed=seed))
      epoch_orders = [rng.permutation(n) for _ in range(epochs)]
    for e, order in enumerate(epoch_orders):
      folder = os.path.join(tmp, f"epoch_{e}")
      os.makedirs(folder)
      for f in INDEX_FIELDS:
        np.save(os.path.join(folder, f"{f}.npy"), np.asarray(getattr(examples, f), np.int64)[order])
    meta = {"tokenizer_info": dict(tokenizer_info), "vocab_size": None,
            "max_seq_len": int(max_seq_len),
            "total_length": int(np.sum(examples.inst_len) + np.sum(examples.resp_len))}
    with open(os.path.join(tmp, "metadata.json"), "w") as f:
      json.dump(meta, f, indent=1)
    _replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
