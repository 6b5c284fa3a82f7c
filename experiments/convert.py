"""Convert between Hugging Face hrm_text directories and native hrm_jax checkpoints.

    python experiments/convert.py --from_hf=DIR --to=CKPT_DIR
    python experiments/convert.py --from=CKPT_DIR --to_hf=DIR [--use_ema=false] [--overwrite]
        [--dtype=bfloat16] [--tokenizer=PATH] [--step=N]

A native checkpoint is a training checkpoint (`hrm_jax/native_weights.py`): --from takes a training
workdir or its checkpoints/ directory (their latest step, or --step) or one step directory, and exports
the EMA weights unless --use_ema=false, in --dtype (float32 by default), with the tokenizer
files AutoTokenizer reads: --tokenizer, else the one a tokenizer.json beside --from or the
run's saved data config names (as generate.py finds it); when none is found the export has
no tokenizer and a warning says so. --to writes a weights-only checkpoint in that layout
(plus the Hugging Face directory's tokenizer.json / tokenizer_info.json when present).

Nothing is ever deleted: the output is built beside its path and renamed into place, and an
existing non-empty output directory is refused. With --overwrite, --to_hf may replace an
earlier Hugging Face export (config.json + model*.safetensors, no subdirectories, no
training or data files): its config and weights are replaced, its other files (tokenizer,
README) kept. A training run, a data set or a native checkpoint is never replaced.
"""

from __future__ import annotations

import sys

from absl import app, flags

from hrm_jax import atomic, cli, hf, model_loading, native_weights, storage

# Copied into a converted checkpoint, so generate.py finds the tokenizer there.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_info.json")

flags.DEFINE_string("from_hf", None, "Hugging Face model directory to import.")
flags.DEFINE_string("to", None, "Native checkpoint directory to write (with --from_hf).")
flags.DEFINE_string("from", None, "Training workdir, checkpoints/ or step directory to export "
                    "(with --to_hf).")
flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --from).")
flags.DEFINE_bool("overwrite", False, "Let --to_hf replace an existing Hugging Face export "
                  "(its config and weights; other files are kept).")
flags.DEFINE_bool("use_ema", True, "Export the EMA weights of a training checkpoint (weights-only "
                  "checkpoints have one set).")

flags.DEFINE_integer("step", None, "With --from: the checkpoint of this step (default the "
                     "latest), like the reference's --ckpt_epoch.")
flags.DEFINE_enum("dtype", None, sorted(hf.DTYPES), "Weights dtype of --to_hf (default float32).")
flags.DEFINE_string("tokenizer", None, "Tokenizer for --to_hf (a tokenizer.json, or a directory "
                    "with tokenizer.json / tokenizer_info.json or a data set's metadata.json); "
                    "default: the training run's.")


def _tokenizer(f: flags.FlagValues):
  """--tokenizer, else the checkpoint's; None (with a warning) when it has none."""
  if f.tokenizer:
    return model_loading.load_tokenizer(f["from"].value, f.tokenizer)
  try:
    return model_loading.load_tokenizer(f["from"].value)
  except FileNotFoundError as e:
    print(f"warning: the export has no tokenizer files: {e}", file=sys.stderr)
    return None


def convert(f: flags.FlagValues) -> None:
  if f.from_hf and f.to and not (f["from"].value or f.to_hf):
    for name in ("dtype", "tokenizer", "step"):
      if f[name].value:
        raise app.UsageError(f"--{name} applies to --from/--to_hf only")
    if f.overwrite:
      raise app.UsageError("--overwrite applies to --to_hf only; a native checkpoint (--to) is "
                           "never replaced: pass a new --to directory")
    atomic.check_replaceable(f.to, overwrite=False)  # fail before the work
    atomic.check_writable(f.to, "--to")
    config, variables = hf.load(f.from_hf)
    tokenizer_files = [storage.cached_copy(p) if storage.is_remote(p) else p
                       for p in (storage.join(f.from_hf, n) for n in TOKENIZER_FILES)
                       if storage.path(p).exists()]
    native_weights.save(f.to, config, variables, extra_files=tokenizer_files)
    print(f"wrote native checkpoint {f.to} ({config.layers_per_stack} layers per stack, "
          f"hidden {config.hidden_size})")
  elif f["from"].value and f.to_hf and not (f.from_hf or f.to):
    atomic.check_replaceable(f.to_hf, overwrite=f.overwrite, same_kind=hf.export_kind)
    atomic.check_writable(f.to_hf, "--to_hf")
    config, variables = native_weights.load(f["from"].value, use_ema=f.use_ema, step=f.step)
    tok = _tokenizer(f)
    hf.save(f.to_hf, config, variables, overwrite=f.overwrite, tokenizer=tok,
            dtype=f.dtype or "float32")
    print(f"wrote Hugging Face directory {f.to_hf}"
          + (" with its tokenizer" if tok else " (no tokenizer)"))
  else:
    raise app.UsageError("give either --from_hf=DIR --to=CKPT_DIR or --from=CKPT_DIR --to_hf=DIR")


def main(argv: list[str]) -> None:
  del argv
  try:
    convert(flags.FLAGS)
  except (FileExistsError, FileNotFoundError, ValueError) as e:  # messages name the path
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  cli.run(main)
