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
stops at eoa. A prompt plus --max_new_tokens must fit the model's max_seq_len (an error
otherwise); left unset, --max_new_tokens is 256 cut to what the context leaves. Every
prompt is read and checked before anything is generated. --H_cycles/--L_cycles override the
recursion depth at test time (an experiment knob: the model was trained with the depth in
its config).

With --prompts_jsonl the generation engine keeps --batch_size rows busy (a row that finishes
takes the next prompt); completions are printed in input order as soon as all earlier ones
are done, with a progress bar on stderr (items/s, tokens/s, ETA).

--draft_cycles=1,1 --draft_len=4: self-speculative decoding (docs/speculative.md): the same
weights at H1 L1 draft 4 tokens, the full depth verifies them in one pass; greedy output is
unchanged, sampled output keeps the full model's distribution; the acceptance rate and
tokens per verification are printed on stderr at the end.
"""

from __future__ import annotations

import json
import math
import sys

import jax
from absl import app, flags

from hrm_jax import cli, generation, jsonl, model_loading, speculative
from hrm_jax.models import registry
from hrm_jax.progress import track

DEFAULT_NEW_TOKENS = 256

flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints/ or step directory, or a "
                    "Hugging Face directory.", required=True)
flags.DEFINE_string("tokenizer", None, "tokenizer.json or its directory (default: the one in "
                    "--checkpoint, else the training data's).")
flags.DEFINE_bool("use_ema", True, "Use the EMA weights of a training checkpoint.")
flags.DEFINE_string("prompt", None, "One prompt text.")
flags.DEFINE_string("prompts_jsonl", None, 'File of {"prompt": ..., "condition": ...} lines.')
flags.DEFINE_string("condition", "direct", "Comma-joined condition tags, e.g. synth,cot.")
flags.DEFINE_integer("max_new_tokens", None, "Most tokens generated per prompt (default: "
                     f"{DEFAULT_NEW_TOKENS}, cut to what the model's max_seq_len leaves).")
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("seed", 0, "PRNG seed for sampling.")
flags.DEFINE_integer("batch_size", 8, "Rows decoded together (--prompts_jsonl); a finished "
                     "row takes the next prompt.")
flags.DEFINE_bool("progress", True, "Progress bar on stderr (--prompts_jsonl).")
flags.DEFINE_integer("H_cycles", None, "Test-time override of H_cycles (experiment knob).")
flags.DEFINE_integer("L_cycles", None, "Test-time override of L_cycles (experiment knob).")
flags.DEFINE_list("draft_cycles", None, "Speculative decoding: H,L cycles of the draft (the same "
                  "weights at a shallower depth), e.g. 1,1; greedy output unchanged.")
flags.DEFINE_enum("kv_cache_dtype", None, ["float32", "bfloat16"], "Store the KV cache in this "
                  "dtype (default: the model's compute dtype); bfloat16 halves its memory "
                  "(docs/inference.md#kv-cache-in-bfloat16).")
flags.DEFINE_integer("draft_len", 4, "Tokens drafted per verification (--draft_cycles).")


def check_flags(f: flags.FlagValues) -> None:
  if (f.prompt is None) == (f.prompts_jsonl is None):
    raise app.UsageError("give exactly one of --prompt and --prompts_jsonl")
  for name in ("batch_size", "max_new_tokens", "H_cycles", "L_cycles"):
    if f[name].value is not None and f[name].value < 1:
      raise app.UsageError(f"--{name}={f[name].value}: must be >= 1")
  if not (math.isfinite(f.temperature) and f.temperature >= 0):
    raise app.UsageError(f"--temperature={f.temperature}: expected a finite number >= 0 "
                         "(0 = greedy)")
  if not 0 < f.top_p <= 1:
    raise app.UsageError(f"--top_p={f.top_p}: expected a number in (0, 1]")
  try:
    speculative.parse_cycles(f.draft_cycles, f.draft_len)
  except ValueError as e:
    raise app.UsageError(str(e)) from e



def read_items(f: flags.FlagValues) -> list[dict]:
  """[{"name", "prompt", "condition"}]; name (`--prompt` or `FILE:LINE`) labels errors."""
  if f.prompt is not None:
    return [{"name": "--prompt", "prompt": f.prompt, "condition": f.condition}]
  try:
    rows = jsonl.read_objects(f.prompts_jsonl, error=app.UsageError)
  except OSError as e:
    raise app.UsageError(f"--prompts_jsonl={f.prompts_jsonl}: cannot read ({e.strerror})") from e
  except UnicodeDecodeError as e:
    raise app.UsageError(f"--prompts_jsonl={f.prompts_jsonl}: not UTF-8 text ({e.reason})") from e
  items = []
  for n, row in rows:
    where = f"{f.prompts_jsonl}:{n}"
    for key in ("prompt", "condition"):
      problem = ("is missing" if key == "prompt" and key not in row else
                 "must be a string" if key in row and not isinstance(row[key], str) else None)
      if problem:
        raise app.UsageError(f'{where}: field "{key}" {problem}; expected '
                             '{"prompt": str, "condition"?: str}')
    items.append({"name": where, "prompt": row["prompt"],
                  "condition": row.get("condition", f.condition)})
  if not items:
    raise app.UsageError(f"--prompts_jsonl={f.prompts_jsonl}: no prompts in the file")
  return items


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  check_flags(f)
  items = read_items(f)
  try:
    config, execution, variables = model_loading.load_model(f.checkpoint, use_ema=f.use_ema)
    if f.kv_cache_dtype:
      execution = execution.replace(kv_cache_dtype=f.kv_cache_dtype)
    tok = model_loading.load_tokenizer(f.checkpoint, f.tokenizer)
  except (FileNotFoundError, ValueError) as e:  # messages name the file
    raise app.UsageError(f"--checkpoint={f.checkpoint}: {e}") from e
  depth = {k: v for k, v in (("H_cycles", f.H_cycles), ("L_cycles", f.L_cycles)) if v is not None}
  try:
    config = config.replace(**depth)
    registry.spec_of(config)
  except ValueError as e:  # e.g. a trm's backprop window deeper than the new H_cycles
    raise app.UsageError(f"--H_cycles/--L_cycles: {e}") from e
  for it in items:
    try:
      it["ids"] = tok.format_prompt(it["prompt"], it["condition"])
    except ValueError as e:
      raise app.UsageError(f"{it['name']}: {e}") from e
  for it in items:
    it["new"] = f.max_new_tokens or max(
        1, min(DEFAULT_NEW_TOKENS, config.max_seq_len - len(it["ids"])))
  stats = speculative.Stats()
  try:  # all prompts checked before any output (a too-long prompt errors, even unset budget)
    answers = generation.stream(
        config, variables, [it["ids"] for it in items], [it["new"] for it in items],
        execution=execution, temperature=f.temperature, top_p=f.top_p, eos_id=tok.eoa_id,
        rng=jax.random.PRNGKey(f.seed), batch_size=f.batch_size,
        names=[it["name"] for it in items], where="generate.py",
        draft_cycles=speculative.parse_cycles(f.draft_cycles, f.draft_len),
        draft_len=f.draft_len, stats=stats)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  finished: dict[int, list[int]] = {}
  printed = 0
  for i, out in track(answers, len(items), "generate", f.progress and bool(f.prompts_jsonl)):
    finished[i] = out
    while printed in finished:  # input order, each as soon as the earlier ones are out
      it, out = items[printed], finished.pop(printed)
      text = tok.decode([t for t in out if t != tok.eoa_id])
      if f.prompts_jsonl:
        print(json.dumps({"prompt": it["prompt"], "completion": text}), flush=True)
      else:
        print(text, flush=True)
      printed += 1
  if f.draft_cycles:
    print(stats.summary(), file=sys.stderr, flush=True)


if __name__ == "__main__":
  cli.run(main)
