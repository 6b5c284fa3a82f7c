"""Check a data_io sampled directory in full, once, instead of on every training start.

    python experiments/check_data.py /data/sft                 # read-only: report, exit 1 if bad
    python experiments/check_data.py /data/sft --record        # also write token_check.json
    python experiments/check_data.py /data/sft --vocab_size=65536

Validates what training's open validates (metadata, index arrays, spans, lengths) and, unlike
open, reads every token id of tokens.npy against the vocabulary (default: the tokenizer vocab
in metadata.json), naming the index of the first bad id and the examples that use it. By
default nothing is written (the directory may be shared or read-only); `--record` writes
`token_check.json` (tokens.npy's size and id range, atomically, umask modes), which training
then trusts while tokens.npy keeps that size. Directories written by prepare_data already have
one.
"""

from __future__ import annotations


from absl import app, flags
import numpy as np

from hrm_jax import atomic, cli, storage
from hrm_jax.data import sampled

_RECORD = flags.DEFINE_bool("record", False, f"write {sampled.TOKEN_CHECK} into the directory "
                            "when every id is in range")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "ids must be below this (default: "
                              "metadata tokenizer_info.vocab_size)", lower_bound=1)


def users_of(data: sampled.SampledData, index: int) -> str:
  """Which examples of epoch 0 read token `index` (for the error message)."""
  ex = data.examples(0)
  hit = (((ex.inst_start <= index) & (index < ex.inst_start + ex.inst_len))
         | ((ex.resp_start <= index) & (index < ex.resp_start + ex.resp_len)))
  found = np.flatnonzero(hit)[:5].tolist()
  return f"epoch_0 example(s) {found}" if found else "no example of epoch_0"


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: check_data.py DIR [--record] [--vocab_size=N]")
  path = storage.text(argv[1])
  tok_file = storage.join(path, "tokens.npy")
  if _RECORD.value:  # before the scan, which reads every token
    atomic.check_writable(storage.join(path, sampled.TOKEN_CHECK), "--record")
  try:
    # What open validates, without its id check (and without trusting a record).
    data = sampled.open_sampled(path, vocab_size=np.iinfo(np.int64).max)
  except sampled.DataError as e:
    cli.fail(str(e), 1)
  vocab = _VOCAB.value or int(data.tokenizer_info["vocab_size"])
  tokens = data.tokens
  lo, hi, bad = sampled.scan_tokens(tokens, vocab)
  if bad is not None:
    cli.fail(f"{tok_file}: field 'tokens': token id {int(tokens[bad])} at index {bad} is "
             f"outside the vocabulary [0, {vocab}); used by {users_of(data, bad)}", 1)
  record = sampled.read_token_record(path, tokens)
  print(f"{path}: {len(tokens):,} tokens ({tokens.dtype}), ids in [{lo}, {hi}], all below "
        f"vocab_size {vocab:,}; {data.num_epochs} epoch(s) of {len(data.examples(0)):,} "
        f"examples; {sampled.TOKEN_CHECK}: "
        f"{'current' if record else 'absent or stale'}")
  if _RECORD.value:
    atomic.write_json(storage.join(path, sampled.TOKEN_CHECK),
                      sampled.token_record(tok_file, tokens.dtype, lo, hi))
    print(f"wrote {storage.join(path, sampled.TOKEN_CHECK)}")


if __name__ == "__main__":
  cli.run(main, positional=True)
