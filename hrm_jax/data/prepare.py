"""JSONL or Parquet {instruction, response, condition} -> data_io sampled directory (SFT path).

Rules of data_io (docs/reference.md#sft-input): instruction = boq + condition tokens + text +
eoq, response = text + eoa; responses shorter than 2 tokens are dropped (so an empty response
text is dropped); with context = max_seq_len + 1, `truncate` cuts the response to
`context - len(instruction)` tokens (dropping the example when nothing is left), `drop` drops
examples longer than the context. One deviation: a response truncated to a single token is
dropped here too (data_io keeps it; the reference's training then crashed on it).

Streaming: the input is read in chunks of lines (`chunk_bytes`), each chunk is parsed and
tokenised (the `tokenizers` batch encoder) in one of `workers` forked processes, and the results
are appended to the output in input order, so memory is bounded by the chunks in flight, not by
the corpus. The output is byte-identical whatever the chunking and worker count.

Mixing (data_io's per-prefix sampling idea): `repeats[file] = r` uses the file's kept examples
floor(r) times plus its first round(frac(r) * kept) once more (r = 0.25 caps a file to its
first quarter, r = 2 doubles it); tokens are written once, repeated examples share their
spans, and the epoch permutations run over the whole mixed list.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import signal
import time
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow.parquet as pq
import tqdm

from hrm_jax import jsonl, storage
from hrm_jax.data.sampled import MIN_RESP_LEN, DataError, sampled_writer, token_dtype
from hrm_jax.tokenizer import Tokenizer, unencodable

LongContext = Literal["truncate", "drop"]
CHUNK_BYTES = 1 << 20  # input bytes per chunk: ~1M tokens at most in flight per worker
PARQUET_COLUMNS = ("instruction", "response", "condition")  # data_io's cleaned data sets


@dataclasses.dataclass
class FileStats:
  rows: int = 0
  kept: int = 0
  dropped_short: int = 0  # response (with eoa) shorter than 2 tokens
  dropped_long: int = 0  # longer than the context (drop), or no room for a response (truncate)
  truncated: int = 0
  inst_tokens: int = 0
  resp_tokens: int = 0
  unk_tokens: int = 0  # <unk> ids in the tokenised texts of all rows (kept or not)
  used: int = 0  # examples in the index after the file's repeat (mixing)

  def add(self, other: "FileStats") -> None:
    for f in dataclasses.fields(FileStats):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclasses.dataclass
class PrepareSummary:
  files: dict[str, FileStats]
  epochs: int
  max_seq_len: int

  @property
  def total(self) -> FileStats:
    t = FileStats()
    for s in self.files.values():
      t.add(s)
    return t

  def table(self) -> str:
    """Markdown table: rows and tokens per input file and in total."""
    head = ("| file | rows | kept | dropped (short response) | dropped (too long) | truncated "
            "| instruction tokens | response tokens | tokens | `<unk>` tokens | examples used "
            "| coverage |")
    lines = [head, "|" + "---|" * 12]
    for name, s in [*self.files.items(), ("**total**", self.total)]:
      lines.append(f"| {name} | {s.rows:,} | {s.kept:,} | {s.dropped_short:,} | "
                   f"{s.dropped_long:,} | {s.truncated:,} | {s.inst_tokens:,} | "
                   f"{s.resp_tokens:,} | {s.inst_tokens + s.resp_tokens:,} | "
                   f"{s.unk_tokens:,} | {s.used:,} | {s.used / max(s.kept, 1):.2f}x |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Rules:
  context: int  # max_seq_len + 1
  long_context: LongContext
  dtype: np.dtype  # of tokens.npy


@dataclasses.dataclass
class Chunk:
  """One chunk of rows, tokenised and filtered: its examples' tokens and lengths."""
  tokens: np.ndarray  # [sum(inst_len + resp_len)] in `Rules.dtype`
  inst_len: np.ndarray  # [kept] int64
  resp_len: np.ndarray  # [kept] int64
  stats: FileStats


def is_parquet(file: str) -> bool:
  return file.endswith(".parquet")


def read_parquet_chunks(file: str, chunk_bytes: int) -> Iterator[tuple[list[tuple[int, dict]],
                                                                       int]]:
  """(rows [(row number from 1, {column: value})], bytes of the file they stand for)."""
  try:
    f = pq.ParquetFile(file)
  except Exception as e:  # pyarrow raises several types for a file that is not Parquet
    raise DataError(f"{file}: not a readable Parquet file ({e})") from e
  names = f.schema_arrow.names
  for col in PARQUET_COLUMNS[:2]:
    if col not in names:
      raise DataError(f"{file}: column '{col}' missing (has {names}); expected "
                      f"{list(PARQUET_COLUMNS)} (condition optional)")
  columns = [c for c in PARQUET_COLUMNS if c in names]
  total, size = max(f.metadata.num_rows, 1), os.path.getsize(file)
  rows_per_chunk = max(1, int(chunk_bytes * total / max(size, 1)))
  no = 0
  for batch in f.iter_batches(batch_size=rows_per_chunk, columns=columns):
    cols = batch.to_pydict()
    rows = [(no + k + 1, {c: cols[c][k] for c in columns}) for k in range(batch.num_rows)]
    no += batch.num_rows
    yield rows, int(size * batch.num_rows / total)


@dataclasses.dataclass(frozen=True)
class LineBlock:
  """Whole lines of a JSONL file as one bytes object (what a worker receives: one buffer
  pickles as a copy, a list of lines as an object each); iterates as (line number, line)."""
  first: int  # line number of the first line (from 1)
  data: bytes

  def __iter__(self) -> Iterator[tuple[int, bytes]]:
    lines = self.data.split(b"\n")
    if lines[-1] == b"":  # the block ends with a newline (all but a file's unterminated end)
      lines.pop()
    return zip(itertools.count(self.first), lines)


def read_chunks(file: str, chunk_bytes: int) -> Iterator[tuple[Any, int]]:
  """(rows, their size in bytes) of about `chunk_bytes` each: a LineBlock of whole lines
  for JSONL (lines split on b"\\n" only, as file iteration does), [(row number,
  {column: value})] for Parquet."""
  if is_parquet(file):
    yield from read_parquet_chunks(file, chunk_bytes)
    return
  first, pieces = 1, []  # pieces: the read bytes after the last newline
  with open(file, "rb") as f:
    while block := f.read(chunk_bytes):
      cut = block.rfind(b"\n") + 1
      if not cut:  # no line ends in this block: keep reading (linear in a long line)
        pieces.append(block)
        continue
      lines = b"".join([*pieces, block[:cut]])
      pieces = [block[cut:]]
      yield LineBlock(first, lines), len(lines)
      first += lines.count(b"\n")
  rest = b"".join(pieces)
  if rest:
    yield LineBlock(first, rest), len(rest)


def _gather(segments: np.ndarray) -> np.ndarray:
  """Indices of the concatenated ranges: segments [n, 2] (start, length) ->
  [sum(length)] int64: start, start + 1, ..., start + length - 1 of each range in order."""
  start, length = segments[:, 0], segments[:, 1]
  ends = np.cumsum(length)
  return np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) + np.repeat(
      start - (ends - length), length)


def _unencodable(file: str, numbers: Sequence[int], insts: Sequence[str],
                 resps: Sequence[str]) -> DataError:
  """The DataError naming the line and field of a text that is not valid Unicode: a lone
  UTF-16 surrogate such as "\\ud800" (JSON allows the escape; scraped text has them), which
  `tokenizers` refuses without saying where."""
  for no, inst, resp in zip(numbers, insts, resps):
    for key, text in (("instruction", inst), ("response", resp)):
      why = unencodable(text)
      if why:
        return DataError(f"{file}:{no}: field '{key}' {why}")
  return DataError(f"{file}: lines {numbers[0]}-{numbers[-1]}: the tokenizer refused a text")


def encode_chunk(tokenizer: Tokenizer, file: str, lines: Iterable[tuple[int, Any]],
                 rules: Rules) -> Chunk:
  """Parse, tokenise and filter one chunk of JSONL lines (or Parquet rows); errors name
  `file` and the line (row). Ids go from the tokenizer's lists into one array once; the
  examples are assembled from it by index (no per-token Python work after tokenising)."""
  stats = FileStats()
  cond_of: list[int] = []  # per row: its condition's index in `cond_ids`
  insts: list[str] = []
  resps: list[str] = []
  cond_index: dict[str, int] = {}
  cond_ids: list[list[int]] = []
  numbers: list[int] = []
  for no, raw in lines:
    obj = raw if isinstance(raw, dict) else jsonl.parse_line(file, no, raw, DataError)
    if obj is None:
      continue
    if isinstance(raw, dict) and obj.get("condition") is None:
      obj = dict(obj, condition="direct")
    for key in ("instruction", "response"):
      if not isinstance(obj.get(key), str):
        raise DataError(f"{file}:{no}: field '{key}' missing or not a string")
    cond = obj.get("condition", "direct")
    if not isinstance(cond, str):
      raise DataError(f"{file}:{no}: field 'condition' must be a string like 'direct' or "
                      "'synth,cot'")
    if cond not in cond_index:
      try:
        cond_ids.append(tokenizer.condition_tokens(cond))
      except ValueError as e:
        raise DataError(f"{file}:{no}: field 'condition': {e}") from e
      cond_index[cond] = len(cond_index)
    cond_of.append(cond_index[cond])
    insts.append(obj["instruction"])
    resps.append(obj["response"])
    numbers.append(no)
  n = stats.rows = len(insts)
  try:
    ids = tokenizer.encode_texts(insts + resps)  # [2n] lists: instructions, then responses
  except TypeError:  # only then look for the text the tokenizer cannot take
    raise _unencodable(file, numbers, insts, resps) from None
  text_len = np.fromiter(map(len, ids), np.int64, count=2 * n)
  text_start = np.cumsum(text_len) - text_len
  # src: every text's ids, then boq, eoq, eoa, then each condition's tokens.
  specials = [tokenizer.boq_id, tokenizer.eoq_id, tokenizer.eoa_id]
  n_ids = int(text_len.sum())
  cond_len = np.array([len(c) for c in cond_ids], np.int64)
  src = np.empty(n_ids + 3 + int(cond_len.sum()), rules.dtype)
  src[:n_ids] = np.fromiter(itertools.chain.from_iterable(ids), rules.dtype, count=n_ids)
  src[n_ids:] = [*specials, *itertools.chain.from_iterable(cond_ids)]
  del ids
  if tokenizer.unk_id is not None:
    stats.unk_tokens = int(np.count_nonzero(src[:n_ids] == tokenizer.unk_id))
  boq, eoq, eoa = n_ids, n_ids + 1, n_ids + 2
  cond_start = n_ids + 3 + np.cumsum(cond_len) - cond_len
  row_cond = np.array(cond_of, np.int64)
  n_inst = cond_len[row_cond] + text_len[:n] + 2  # boq + condition + text + eoq
  n_resp = text_len[n:] + 1  # text + eoa
  short = n_resp < MIN_RESP_LEN
  allowed = rules.context - np.minimum(n_inst, rules.context)
  over = ~short & (n_resp > allowed)
  long = over if rules.long_context == "drop" else over & (allowed < MIN_RESP_LEN)
  cut = over & ~long
  kept = ~short & ~long
  keep = np.where(cut, allowed, n_resp)[kept]
  stats.dropped_short, stats.dropped_long = int(short.sum()), int(long.sum())
  stats.truncated, stats.kept = int(cut.sum()), int(kept.sum())
  inst_len = n_inst[kept]
  stats.inst_tokens, stats.resp_tokens = int(inst_len.sum()), int(keep.sum())
  # Each kept example: boq, condition, instruction text, eoq, response text[:keep], and eoa
  # unless the response was cut: six ranges of src per example.
  full = ~cut[kept]
  ones = np.ones(len(keep), np.int64)
  segments = np.stack([
      np.stack([ones * boq, ones], 1),
      np.stack([cond_start[row_cond[kept]], cond_len[row_cond[kept]]], 1),
      np.stack([text_start[:n][kept], text_len[:n][kept]], 1),
      np.stack([ones * eoq, ones], 1),
      np.stack([text_start[n:][kept], keep - full], 1),
      np.stack([ones * eoa, full.astype(np.int64)], 1)], 1)  # [kept, 6, 2]
  return Chunk(src[_gather(segments.reshape(-1, 2))], inst_len, keep, stats)


_worker: dict[str, Any] = {}  # the tokenizer of a forked worker process (set by _init_worker)


def _init_worker(tokenizer: Tokenizer) -> None:
  # One thread per worker: the processes are the parallelism (threads inside each contend).
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  # Ctrl-C reaches the whole process group: the parent stops the pool (and says so in one
  # line); a worker's own KeyboardInterrupt traceback would only add noise.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _worker["tokenizer"] = tokenizer


def _encode_in_worker(file: str, lines: Iterable[tuple[int, Any]], rules: Rules) -> Chunk:
  return encode_chunk(_worker["tokenizer"], file, lines, rules)


def encoded_chunks(files: Sequence[str], tokenizer: Tokenizer, rules: Rules, *, workers: int,
                   chunk_bytes: int) -> Iterator[tuple[str, int, Chunk]]:
  """(file, input bytes, Chunk) in input order; with workers > 1, chunks are encoded by that
  many forked processes with at most 2 * workers chunks in flight (bounded memory)."""
  jobs = ((f, lines, size) for f in files for lines, size in read_chunks(f, chunk_bytes))
  if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
    for f, lines, size in jobs:
      yield f, size, encode_chunk(tokenizer, f, lines, rules)
    return
  # fork: workers inherit the loaded tokenizer (nothing is pickled but lines and results);
  # the parent has not encoded anything, so the tokenizers thread pool is not forked.
  with multiprocessing.get_context("fork").Pool(workers, _init_worker, (tokenizer,)) as pool:
    pending: collections.deque = collections.deque()
    for f, lines, size in jobs:
      pending.append((f, size, pool.apply_async(_encode_in_worker, (f, lines, rules))))
      if len(pending) >= 2 * workers:
        f0, size0, result = pending.popleft()
        yield f0, size0, result.get()
    while pending:
      f0, size0, result = pending.popleft()
      yield f0, size0, result.get()


def prepare_jsonl(files: Sequence[str], tokenizer: Tokenizer, out: str, *, epochs: int,
                  max_seq_len: int = 4096, long_context: LongContext = "truncate", seed: int = 0,
                  tokenizer_json: str | None = None, workers: int = 1,
                  chunk_bytes: int = CHUNK_BYTES, overwrite: bool = False,
                  other_inputs: Sequence[str] = (), progress: bool = False,
                  repeats: dict[str, float] | None = None) -> PrepareSummary:
  """Tokenise, filter and write `out` (atomically, streaming). max_seq_len: model context
  (metadata stores max_seq_len + 1). tokenizer_json: copied into `out` for
  self-containment. An existing non-empty `out` is refused unless `overwrite`, and even then
  only a sampled directory holding none of the inputs (files, tokenizer_json, other_inputs)
  is replaced. progress: a bar with MB/s and rows/s on stderr. Files ending in .parquet are
  read as Parquet (columns instruction, response, condition). repeats: file -> repeat factor
  (mixing, see the module doc; default 1)."""
  if epochs < 1:
    raise ValueError(f"epochs={epochs} must be >= 1")
  if long_context not in ("truncate", "drop"):
    raise ValueError(f"long_context={long_context!r} must be 'truncate' or 'drop'")
  for file in files:
    if not os.path.isfile(file):
      raise DataError(f"{file}: input file missing")
  repeats = dict(repeats or {})
  if repeats and len(set(files)) < len(files):
    raise DataError(f"{files}: a file is listed twice; give it a repeat factor instead")
  for file, r in repeats.items():
    if file not in files:
      raise DataError(f"{file}: has a repeat factor but is not an input")
    if not r > 0:
      raise DataError(f"{file}: repeat factor {r} must be > 0")
  out = storage.text(out)
  info = dict(tokenizer.info.to_dict(), tokenizer_path=out,
              vocab_size=tokenizer.tokenizer_vocab_size)
  rules = Rules(max_seq_len + 1, long_context, token_dtype(tokenizer.tokenizer_vocab_size))
  stats = {file: FileStats() for file in files}
  inputs = [*files, *([tokenizer_json] if tokenizer_json else []), *other_inputs]
  try:
    with sampled_writer(out, tokenizer_info=info, max_seq_len=rules.context, epochs=epochs,
                        seed=seed, overwrite=overwrite, inputs=inputs,
                        extra_files={"tokenizer.json": tokenizer_json} if tokenizer_json else None,
                        extra_json={"tokenizer_info.json": info}) as writer, tqdm.tqdm(
                            total=sum(os.path.getsize(f) for f in files), unit="B",
                            unit_scale=True, desc="prepare", disable=not progress) as bar:
      t0, rows = time.perf_counter(), 0
      for file, size, chunk in encoded_chunks(files, tokenizer, rules, workers=workers,
                                              chunk_bytes=chunk_bytes):
        stats[file].add(chunk.stats)
        writer.append(chunk.tokens, chunk.inst_len, chunk.resp_len)
        rows += chunk.stats.rows
        bar.update(size)
        bar.set_postfix_str(f"{rows / max(time.perf_counter() - t0, 1e-9):,.0f} rows/s",
                            refresh=False)
      if not sum(s.kept for s in stats.values()):
        raise DataError(f"{', '.join(files)}: no example survived filtering; nothing to write")
      if repeats:
        writer.selection = mix_selection(files, stats, repeats)
  except FileExistsError as e:
    raise DataError(str(e)) from e
  for file, st in stats.items():
    st.used = len(mix_selection([file], {file: st}, {file: repeats.get(file, 1.0)}))
  return PrepareSummary(stats, epochs, max_seq_len)


def mix_selection(files: Sequence[str], stats: dict[str, FileStats],
                  repeats: dict[str, float]) -> np.ndarray:
  """Indices into the written examples ([kept] in file order) that form the mixed list:
  per file (in order), its examples floor(r) times, then its first round(frac(r) * kept)."""
  parts, first = [], 0
  for file in dict.fromkeys(files):
    kept, r = stats[file].kept, float(repeats.get(file, 1.0))
    ids = np.arange(first, first + kept, dtype=np.int64)
    whole = int(r)
    parts += [ids] * whole + [ids[:int(round((r - whole) * kept))]]
    first += kept
  return np.concatenate(parts)
