"""Convert between Hugging Face hrm_text directories and native hrm_jax checkpoints.

    python experiments/convert.py --from_hf=DIR --to=CKPT_DIR
    python experiments/convert.py --from=CKPT_DIR --to_hf=DIR [--use_ema=false]
"""

from __future__ import annotations

from absl import app, flags

from hrm_jax import hf, native

flags.DEFINE_string("from_hf", None, "Hugging Face model directory to import.")
flags.DEFINE_string("to", None, "Native checkpoint directory to write (with --from_hf).")
flags.DEFINE_string("from", None, "Native checkpoint directory to export (with --to_hf).")
flags.DEFINE_string("to_hf", None, "Hugging Face directory to write (with --from).")
flags.DEFINE_bool("use_ema", True, "Export the EMA weights when the checkpoint has them.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if f.from_hf and f.to and not (f["from"].value or f.to_hf):
    config, variables = hf.load(f.from_hf)
    native.save(f.to, config, variables)
    print(f"wrote native checkpoint {f.to} ({config.layers_per_stack} layers per stack, "
          f"hidden {config.hidden_size})")
  elif f["from"].value and f.to_hf and not (f.from_hf or f.to):
    config, variables = native.load(f["from"].value)
    hf.save(f.to_hf, config, variables, use_ema=f.use_ema)
    print(f"wrote Hugging Face directory {f.to_hf}")
  else:
    raise app.UsageError("give either --from_hf=DIR --to=CKPT_DIR or --from=CKPT_DIR --to_hf=DIR")


if __name__ == "__main__":
  app.run(main)
