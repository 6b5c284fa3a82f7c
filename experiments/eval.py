"""Evaluate a checkpoint on the benchmarks of REFERENCE section 6 (hrm_jax.eval).

    python experiments/eval.py --checkpoint=HRM-Text-1B --data_dir=/data/bench \
        --output=results/hrm1b.json                        # all nine benchmarks
    python experiments/eval.py --checkpoint=runs/sft --run_only=MATH,DROP --limit=100
    python experiments/eval.py --checkpoint=DIR --run_only=GSM8K --sweep_cycles=1,2,3,4 \
        --output=depth.json                     # + depth_sweep.md and depth_sweep.png

--checkpoint is a Hugging Face directory or a native training checkpoint (EMA weights unless
--use_ema=false); the tokenizer is found as in generate.py. Data: `<data_dir>/<benchmark>/
<split>.jsonl|.parquet` in each source data set's columns (README, "Evaluation"), or without
--data_dir the Hugging Face hub through `datasets`. Prints a markdown table of scores and
writes the results (scores, per-benchmark settings, a few outputs) to --output as JSON.

--sweep_cycles runs the selected benchmarks at each recursion depth (--sweep_axis, default
H_cycles) with the same weights: test-time compute; the model was trained at one depth.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

import jax
from absl import app, flags

from hrm_jax import loading
from hrm_jax.eval import runner, sources, tasks
from hrm_jax.plotting import plot

flags.DEFINE_string("checkpoint", None, "Hugging Face directory, or training workdir, its "
                    "checkpoints/ or a step directory.", required=True)
flags.DEFINE_string("tokenizer", None, "tokenizer.json or its directory (default: the one in "
                    "--checkpoint, else the training data's).")
flags.DEFINE_bool("use_ema", True, "Use the EMA weights of a training checkpoint.")
flags.DEFINE_string("data_dir", None, "<data_dir>/<benchmark>/<split>.jsonl|.parquet; default: "
                    "the Hugging Face hub via `datasets`.")
flags.DEFINE_string("run_only", None, "Comma-separated benchmarks (default all): "
                    + ",".join(tasks.benchmarks()))
flags.DEFINE_integer("limit", None, "Evaluate only the first N items of each benchmark.")
flags.DEFINE_string("output", None, "Results JSON (a sweep also writes <stem>_sweep.md/.png).")
flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
flags.DEFINE_integer("max_new_tokens", None, "Cap on generated tokens of open-ended benchmarks "
                     "(default: the rest of the 3072 context; DROP 128).")
flags.DEFINE_integer("aime_samples", 16, "Samples per AIME problem (temperature 0.6).")
flags.DEFINE_integer("seed", 0, "PRNG seed for sampling (AIME).")
flags.DEFINE_integer("H_cycles", None, "Test-time override of H_cycles (experiment knob).")
flags.DEFINE_integer("L_cycles", None, "Test-time override of L_cycles (experiment knob).")
flags.DEFINE_list("sweep_cycles", None, "Depths to evaluate at, e.g. 1,2,3,4.")
flags.DEFINE_enum("sweep_axis", "H_cycles", ["H_cycles", "L_cycles"], "What --sweep_cycles sets.")
flags.DEFINE_bool("progress", True, "Show a progress bar per generation stream.")


def write_atomic(path: str, text: str) -> None:
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def sweep_table(axis: str, by_depth: dict[int, dict[str, dict]]) -> str:
  """Benchmarks as rows, depths as columns, scores in percent."""
  depths = list(by_depth)
  names = list(next(iter(by_depth.values())))
  lines = [f"| benchmark (metric) | " + " | ".join(f"{axis}={d}" for d in depths) + " |",
           "|---|" + "---|" * len(depths)]
  for name in names:
    metric = by_depth[depths[0]][name]["metric"]
    cells = " | ".join(f"{100 * by_depth[d][name]['score']:.1f}" for d in depths)
    lines.append(f"| {name} ({metric}) | {cells} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if f.sweep_cycles and not f.output:
    raise app.UsageError("--sweep_cycles needs --output (the table and PNG go beside it)")
  try:
    depths = [int(d) for d in f.sweep_cycles or []]
  except ValueError as e:
    raise app.UsageError(f"--sweep_cycles={f.sweep_cycles}: expected integers ({e})") from e
  if any(d < 1 for d in depths) or any(v is not None and v < 1 for v in (f.H_cycles, f.L_cycles)):
    raise app.UsageError("cycle counts must be >= 1")
  if f.limit is not None and f.limit < 1:
    raise app.UsageError(f"--limit={f.limit} must be >= 1")
  try:
    benches = tasks.select(f.run_only, f.aime_samples)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    if f.data_dir is not None:
      sources.check_local(f.data_dir, runner.needed_files(benches))
    config, variables = loading.load_model(f.checkpoint, use_ema=f.use_ema)
    tok = loading.load_tokenizer(f.checkpoint, f.tokenizer)
    data = {b.name: runner.load_examples(b, f.data_dir, f.limit) for b in benches}
  except sources.EvalDataError as e:
    sys.exit(f"eval.py: {e}")
  except FileNotFoundError as e:
    raise app.UsageError(f"--checkpoint={f.checkpoint}: {e}") from e
  base = config.replace(**{k: v for k, v in (("H_cycles", f.H_cycles),
                                              ("L_cycles", f.L_cycles)) if v})
  settings: dict[str, Any] = {
      "checkpoint": f.checkpoint, "use_ema": f.use_ema, "data_dir": f.data_dir,
      "limit": f.limit, "batch_size": f.batch_size, "max_new_tokens": f.max_new_tokens,
      "aime_samples": f.aime_samples, "seed": f.seed, "H_cycles": base.H_cycles,
      "L_cycles": base.L_cycles, "max_seq_len": base.max_seq_len}

  def run(cfg) -> dict[str, dict]:
    return runner.evaluate(cfg, variables, tok, benches, f.data_dir, limit=f.limit,
                           batch_size=f.batch_size, max_new_tokens=f.max_new_tokens,
                           rng=jax.random.PRNGKey(f.seed), progress=f.progress, loaded=data)

  if not depths:
    results = run(base)
    print(runner.markdown_table(results), flush=True)
    if f.output:
      write_atomic(f.output, json.dumps({"settings": settings, "results": results}, indent=1))
      print(f"wrote {f.output}")
    return
  by_depth: dict[int, dict[str, dict]] = {}
  for d in depths:
    print(f"[eval] {f.sweep_axis}={d}", file=sys.stderr, flush=True)
    by_depth[d] = run(base.replace(**{f.sweep_axis: d}))
  table = sweep_table(f.sweep_axis, by_depth)
  print(table, flush=True)
  stem = os.path.splitext(f.output)[0]
  write_atomic(f.output, json.dumps({"settings": settings, "sweep": {
      "axis": f.sweep_axis, "values": depths,
      "results": {str(d): r for d, r in by_depth.items()}}}, indent=1))
  write_atomic(stem + "_sweep.md", table + "\n")
  curves = {name: {d: {"score": by_depth[d][name]["score"]} for d in depths}
            for name in by_depth[depths[0]]}
  plot(curves, ["score"], stem + "_sweep.png", xlabel=f.sweep_axis, marker="o")
  print(f"wrote {f.output}, {stem}_sweep.md, {stem}_sweep.png")


if __name__ == "__main__":
  app.run(main)
