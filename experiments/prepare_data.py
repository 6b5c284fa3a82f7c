"""JSONL {"instruction", "response", "condition"} -> a data_io sampled directory (SFT path).

    python experiments/prepare_data.py --jsonl=a.jsonl,b.jsonl --tokenizer=tokenizer.json \
        --tokenizer_info=tokenizer_info.json --out=/tmp/sft --epochs=5 --max_seq_len=4096

Drop/truncate rules are data_io's (see hrm_jax/data/prepare.py). The output is written to a
temp folder and renamed into place, so an existing --out is never left half-written. Prints a
markdown table of rows and tokens per input file.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from hrm_jax import data
from hrm_jax.tokenizer import Tokenizer

_JSONL = flags.DEFINE_list("jsonl", None, "input JSONL file(s), comma-separated")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json")
_INFO = flags.DEFINE_string("tokenizer_info", None, "tokenizer_info JSON (boq/eoq/eoa/"
                            "condition_mapping); default: REFERENCE special tokens")
_OUT = flags.DEFINE_string("out", None, "output directory")
_EPOCHS = flags.DEFINE_integer("epochs", None, "epoch orders to write (>= training epochs)",
                               lower_bound=1)
_MAX_SEQ_LEN = flags.DEFINE_integer("max_seq_len", 4096, "model context (metadata stores +1)",
                                    lower_bound=2)
_LONG = flags.DEFINE_enum("long_context", "truncate", ["truncate", "drop"],
                          "examples longer than the context: cut the response, or drop")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the epoch permutations")
flags.mark_flags_as_required(["jsonl", "tokenizer", "out", "epochs"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not os.path.isfile(_TOKENIZER.value):
    raise app.UsageError(f"--tokenizer: no file {_TOKENIZER.value}")
  if _INFO.value is not None and not os.path.isfile(_INFO.value):
    raise app.UsageError(f"--tokenizer_info: no file {_INFO.value}")
  try:
    tok = Tokenizer.load(_TOKENIZER.value, _INFO.value)
  except (ValueError, OSError) as e:
    raise app.UsageError(f"--tokenizer/--tokenizer_info: {e}") from e
  try:
    summary = data.prepare_jsonl(_JSONL.value, tok, _OUT.value, epochs=_EPOCHS.value,
                                 max_seq_len=_MAX_SEQ_LEN.value, long_context=_LONG.value,
                                 seed=_SEED.value, tokenizer_json=_TOKENIZER.value)
  except data.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(summary.table())
  print(f"\nwrote {_EPOCHS.value} epoch(s) to {os.path.abspath(_OUT.value)} "
        f"(max_seq_len {_MAX_SEQ_LEN.value}, long_context={_LONG.value})")


if __name__ == "__main__":
  app.run(main)
