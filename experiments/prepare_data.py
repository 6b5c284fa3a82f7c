"""JSONL or Parquet {instruction, response, condition} -> a data_io sampled directory (SFT).

    python experiments/prepare_data.py --jsonl=a.jsonl,b.jsonl --tokenizer=tokenizer.json \
        --tokenizer_info=tokenizer_info.json --out=/tmp/sft --epochs=5 --max_seq_len=4096
    python experiments/prepare_data.py --parquet=clean.parquet --mix=math.jsonl:2,web.jsonl:0.25 \
        --tokenizer=tokenizer.json --out=/tmp/mix --epochs=3

--mix=PATH:R adds PATH (JSONL, or Parquet by its .parquet suffix) used R times: its kept
examples floor(R) times plus its first frac(R) share once more (R=0.25 caps it to a quarter);
the table's coverage column shows the result per file.

Drop/truncate rules are data_io's (see hrm_jax/data/prepare.py). Streams: chunks of lines are
tokenised by --workers processes and appended to the output, so memory does not grow with the
corpus. The output is written to a temp folder and renamed into place. An existing non-empty
--out is refused; with --overwrite only a sampled directory (metadata.json, tokens.npy,
epoch_*/ and this script's extras) that holds none of the inputs is replaced. Shows a progress
bar (MB/s, rows/s) on stderr and prints a markdown table of rows, tokens and <unk> tokens per
input file. Token ids are checked while writing and recorded (token_check.json), so training
never rescans tokens.npy.
"""

from __future__ import annotations

import os

from absl import app, flags

from hrm_jax import cli, data, storage
from hrm_jax.tokenizer import Tokenizer

_JSONL = flags.DEFINE_list("jsonl", [], "input JSONL file(s), comma-separated")
_PARQUET = flags.DEFINE_list("parquet", [], "input Parquet file(s) (*.parquet; columns "
                             "instruction, response, optional condition), comma-separated")
_MIX = flags.DEFINE_list("mix", [], "PATH:R, comma-separated: an input used R times (R > 0; "
                         "fractions take the file's first share)")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json")
_INFO = flags.DEFINE_string("tokenizer_info", None, "tokenizer_info JSON (boq/eoq/eoa/"
                            "condition_mapping); default: docs/reference.md#prompt-format")
_OUT = flags.DEFINE_string("out", None, "output directory")
_EPOCHS = flags.DEFINE_integer("epochs", None, "epoch orders to write (>= training epochs)",
                               lower_bound=1)
_MAX_SEQ_LEN = flags.DEFINE_integer("max_seq_len", 4096, "model context (metadata stores +1)",
                                    lower_bound=2)
_LONG = flags.DEFINE_enum("long_context", "truncate", ["truncate", "drop"],
                          "examples longer than the context: cut the response, or drop")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the epoch permutations")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1,
                                "processes that parse and tokenise (default: CPU count)",
                                lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing sampled directory at "
                               "--out (never anything else)")
flags.mark_flags_as_required(["tokenizer", "out", "epochs"])


def inputs() -> tuple[list[str], dict[str, float]]:
  """(input files in order, repeat factor per file) from --jsonl, --parquet and --mix."""
  for f in _PARQUET.value:
    if not f.endswith(".parquet"):
      raise app.UsageError(f"--parquet: {f} must end in .parquet")
  files = [*_JSONL.value, *_PARQUET.value]
  repeats = {}
  for item in _MIX.value:
    path, sep, r = item.rpartition(":")
    try:
      factor = float(r)
    except ValueError:
      factor = -1.0
    if not sep or not path or not factor > 0:
      raise app.UsageError(f"--mix: {item!r} must be PATH:R with a number R > 0")
    if path not in files:
      files.append(path)
    repeats[path] = factor
  if not files:
    raise app.UsageError("give input files with --jsonl, --parquet or --mix")
  return files, repeats


def main(argv):
  del argv
  if not os.path.isfile(_TOKENIZER.value):
    raise app.UsageError(f"--tokenizer: no file {_TOKENIZER.value}")
  if _INFO.value is not None and not os.path.isfile(_INFO.value):
    raise app.UsageError(f"--tokenizer_info: no file {_INFO.value}")
  try:
    tok = Tokenizer.load(_TOKENIZER.value, _INFO.value)
  except (ValueError, OSError) as e:
    raise app.UsageError(f"--tokenizer/--tokenizer_info: {e}") from e
  files, repeats = inputs()
  try:
    summary = data.prepare_jsonl(files, tok, _OUT.value, epochs=_EPOCHS.value,
                                 max_seq_len=_MAX_SEQ_LEN.value, long_context=_LONG.value,
                                 seed=_SEED.value, tokenizer_json=_TOKENIZER.value,
                                 workers=_WORKERS.value, overwrite=_OVERWRITE.value,
                                 other_inputs=[_INFO.value] if _INFO.value else [],
                                 progress=True, repeats=repeats)
  except data.DataError as e:
    cli.fail(str(e))
  print(summary.table())
  print(f"\nwrote {_EPOCHS.value} epoch(s) to {storage.text(_OUT.value)} "
        f"(max_seq_len {_MAX_SEQ_LEN.value}, long_context={_LONG.value})")


if __name__ == "__main__":
  cli.run(main)
