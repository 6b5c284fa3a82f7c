"""Generate completions from a native (training) checkpoint or a Hugging Face directory.

    python experiments/generate.py --checkpoint=DIR --prompt="What is 2+2?" \
        --condition=synth,cot --max_new_tokens=256 [--temperature=0.6 --top_p=0.95 --seed=0]
    python experiments/generate.py --checkpoint=DIR --prompts_jsonl=FILE   # {"prompt", "condition"?}
    python experiments/generate.py --checkpoint=runs/demo --prompt="12+34=" --condition=synth

--checkpoint is a Hugging Face directory (it has config.json) or a native checkpoint: a
training workdir (latest step), its checkpoints/ directory or one step directory, read with
its EMA weights unless --use_ema=false. The tokenizer is --tokenizer, else tokenizer.json in
the --checkpoint directory (Hugging Face, or copied there by convert.py --from_hf), else the
one of the training data named in the checkpoint's saved config (the demo cache for
data.source=demo, or data.path's metadata.json tokenizer_info).

Each prompt is boq + condition tokens + text + eoq, the bidirectional prefix; generation
stops at eoa. --H_cycles/--L_cycles override the recursion depth at test time (an
experiment knob: the model was trained with the depth in its config).
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags

import hrm_jax
from hrm_jax import loading

flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints/ or step directory, or a "
                    "Hugging Face directory.", required=True)
flags.DEFINE_string("tokenizer", None, "tokenizer.json or its directory (default: the one in "
                    "--checkpoint, else the training data's).")
flags.DEFINE_bool("use_ema", True, "Use the EMA weights of a training checkpoint.")
flags.DEFINE_string("prompt", None, "One prompt text.")
flags.DEFINE_string("prompts_jsonl", None, 'File of {"prompt": ..., "condition": ...} lines.')
flags.DEFINE_string("condition", "direct", "Comma-joined condition tags, e.g. synth,cot.")
flags.DEFINE_integer("max_new_tokens", 256, "Most tokens generated per prompt.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("seed", 0, "PRNG seed for sampling.")
flags.DEFINE_integer("batch_size", 8, "Prompts per generate call (--prompts_jsonl).")
flags.DEFINE_integer("H_cycles", None, "Test-time override of H_cycles (experiment knob).")
flags.DEFINE_integer("L_cycles", None, "Test-time override of L_cycles (experiment knob).")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if (f.prompt is None) == (f.prompts_jsonl is None):
    raise app.UsageError("give exactly one of --prompt and --prompts_jsonl")
  try:
    config, variables = loading.load_model(f.checkpoint, use_ema=f.use_ema)
    tok = loading.load_tokenizer(f.checkpoint, f.tokenizer)
  except FileNotFoundError as e:
    raise app.UsageError(f"--checkpoint={f.checkpoint}: {e}") from e
  depth = {k: v for k, v in (("H_cycles", f.H_cycles), ("L_cycles", f.L_cycles)) if v}
  config = config.replace(**depth)
  if f.prompt is not None:
    items = [{"prompt": f.prompt, "condition": f.condition}]
  else:
    with open(f.prompts_jsonl) as fh:
      items = [json.loads(line) for line in fh if line.strip()]
  rng = jax.random.PRNGKey(f.seed)
  for start in range(0, len(items), f.batch_size):
    chunk = items[start:start + f.batch_size]
    prompts = [tok.format_prompt(it["prompt"], it.get("condition", f.condition)) for it in chunk]
    rng, key = jax.random.split(rng)
    outs = hrm_jax.generate(config, variables, prompts, f.max_new_tokens, f.temperature,
                            f.top_p, eos_id=tok.eoa_id, rng=key)
    for it, out in zip(chunk, outs):
      text = tok.decode([t for t in out if t != tok.eoa_id])
      if f.prompts_jsonl:
        print(json.dumps({"prompt": it["prompt"], "completion": text}), flush=True)
      else:
        print(text, flush=True)
    if f.prompts_jsonl:
      print(f"[generate] {start + len(chunk)}/{len(items)} prompts", file=sys.stderr, flush=True)


if __name__ == "__main__":
  app.run(main)
