"""JSONL {"instruction", "response", "condition"} -> data_io sampled directory (the SFT path).

Rules of data_io's sampler (REFERENCE section 5): instruction = boq + condition tokens + text +
eoq, response = text + eoa; responses shorter than 2 tokens are dropped (so an empty response
text is dropped); with context = max_seq_len + 1, `truncate` cuts the response to
`context - len(instruction)` tokens (dropping the example when nothing is left), `drop` drops
examples longer than the context. One deviation: a response truncated to a single token is
dropped here too (data_io keeps it; the reference's training then crashed on it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal, Sequence

from hrm_jax import jsonl
from hrm_jax.data.sampled import MIN_RESP_LEN, DataError, concat_examples, write_sampled
from hrm_jax.tokenizer import Tokenizer

LongContext = Literal["truncate", "drop"]


@dataclasses.dataclass
class FileStats:
  rows: int = 0
  kept: int = 0
  dropped_short: int = 0  # response (with eoa) shorter than 2 tokens
  dropped_long: int = 0  # longer than the context (drop), or no room for a response (truncate)
  truncated: int = 0
  inst_tokens: int = 0
  resp_tokens: int = 0


@dataclasses.dataclass
class PrepareSummary:
  files: dict[str, FileStats]
  epochs: int
  max_seq_len: int

  @property
  def total(self) -> FileStats:
    t = FileStats()
    for s in self.files.values():
      for f in dataclasses.fields(FileStats):
        setattr(t, f.name, getattr(t, f.name) + getattr(s, f.name))
    return t

  def table(self) -> str:
    """Markdown table: rows and tokens per input file and in total."""
    head = ("| file | rows | kept | dropped (short response) | dropped (too long) | truncated "
            "| instruction tokens | response tokens | tokens |")
    lines = [head, "|" + "---|" * 9]
    for name, s in [*self.files.items(), ("**total**", self.total)]:
      lines.append(f"| {name} | {s.rows:,} | {s.kept:,} | {s.dropped_short:,} | "
                   f"{s.dropped_long:,} | {s.truncated:,} | {s.inst_tokens:,} | "
                   f"{s.resp_tokens:,} | {s.inst_tokens + s.resp_tokens:,} |")
    return "\n".join(lines)


def read_jsonl(file: str) -> list[tuple[int, str, str, str]]:
  """(line number, instruction, response, condition) per non-blank line of `file`."""
  if not os.path.isfile(file):
    raise DataError(f"{file}: input file missing")
  rows = []
  for no, obj in jsonl.read_objects(file, DataError):
    for key in ("instruction", "response"):
      if not isinstance(obj.get(key), str):
        raise DataError(f"{file}:{no}: field '{key}' missing or not a string")
    cond = obj.get("condition", "direct")
    if not isinstance(cond, str):
      raise DataError(f"{file}:{no}: field 'condition' must be a string like 'direct' or "
                      "'synth,cot'")
    rows.append((no, obj["instruction"], obj["response"], cond))
  return rows


def prepare_jsonl(files: Sequence[str], tokenizer: Tokenizer, out: str, *, epochs: int,
                  max_seq_len: int = 4096, long_context: LongContext = "truncate", seed: int = 0,
                  tokenizer_json: str | None = None) -> PrepareSummary:
  """Tokenise, filter and write `out` (atomically). max_seq_len: model context (metadata
  stores max_seq_len + 1). tokenizer_json: copied into `out` for self-containment."""
  if epochs < 1:
    raise ValueError(f"epochs={epochs} must be >= 1")
  if long_context not in ("truncate", "drop"):
    raise ValueError(f"long_context={long_context!r} must be 'truncate' or 'drop'")
  context = max_seq_len + 1
  stats: dict[str, FileStats] = {}
  inst_all: list[list[int]] = []
  resp_all: list[list[int]] = []
  for file in files:
    rows = read_jsonl(file)
    s = stats.setdefault(file, FileStats())
    s.rows += len(rows)
    prompts = []
    for no, inst, _, cond in rows:
      try:
        prompts.append(tokenizer.condition_tokens(cond))
      except ValueError as e:
        raise DataError(f"{file}:{no}: field 'condition': {e}") from e
    inst_ids = tokenizer.encode_texts([r[1] for r in rows])
    resp_ids = tokenizer.encode_texts([r[2] for r in rows])
    for cond_ids, i_text, o_text in zip(prompts, inst_ids, resp_ids):
      inst = [tokenizer.boq_id, *cond_ids, *i_text, tokenizer.eoq_id]
      resp = [*o_text, tokenizer.eoa_id]
      if len(resp) < MIN_RESP_LEN:
        s.dropped_short += 1
        continue
      allowed = context - min(len(inst), context)
      if long_context == "truncate":
        if len(resp) > allowed:
          if allowed < MIN_RESP_LEN:
            s.dropped_long += 1
            continue
          resp = resp[:allowed]
          s.truncated += 1
      elif len(resp) > allowed:
        s.dropped_long += 1
        continue
      s.kept += 1
      s.inst_tokens += len(inst)
      s.resp_tokens += len(resp)
      inst_all.append(inst)
      resp_all.append(resp)
  if not inst_all:
    raise DataError(f"{', '.join(files)}: no example survived filtering; nothing to write")

  tokens, examples = concat_examples(inst_all, resp_all)
  out = os.path.abspath(out)
  info = dict(tokenizer.info.to_dict(), tokenizer_path=out,
              vocab_size=tokenizer.tokenizer_vocab_size)
  write_sampled(out, tokens=tokens, examples=examples, tokenizer_info=info, max_seq_len=context,
                epochs=epochs, seed=seed,
                extra_files={"tokenizer.json": tokenizer_json} if tokenizer_json else None,
                extra_json={"tokenizer_info.json": info})
  return PrepareSummary(stats, epochs, max_seq_len)
