"""Evaluate a checkpoint with the reference protocol (hrm_jax.eval, docs/evaluation.md).

    python experiments/eval.py --checkpoint=HRM-Text-1B --data_dir=/data/bench \
        --output=results/hrm1b.json                # the eight benchmarks of the default run
    python experiments/eval.py --checkpoint=runs/sft --run_only=MATH,DROP --limit=100
    python experiments/eval.py --checkpoint=DIR --run_only=AIME --aime_samples=16
    python experiments/eval.py --data_dir=/data/bench --dump_prompts=prompts.jsonl  # no model
    python experiments/eval.py --checkpoint=DIR --run_only=GSM8K --sweep_cycles=1,2,3,4 \
        --output=depth.json                     # + depth_sweep.md and depth_sweep.png

--checkpoint is a Hugging Face directory or a native training checkpoint (EMA weights unless
--use_ema=false); the tokenizer is found as in generate.py. Data: `<data_dir>/<benchmark>/
<split>.jsonl|.parquet` in each source data set's columns (docs/evaluation.md), or without
--data_dir the Hugging Face hub through `datasets`. Prints a markdown table of scores and
writes the results (scores, per-benchmark settings, a few outputs) to --output as JSON.
--dump_prompts writes every prompt as the model would read it (one JSON line each) and exits
without loading a model.

--sweep_cycles runs the selected benchmarks at each recursion depth (--sweep_axis, default
H_cycles) with the same weights: test-time compute; the model was trained at one depth.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
from absl import app, flags

from hrm_jax import atomic, cli, model_loading, speculative
from hrm_jax.eval import runner, scoring, sources, tasks
from hrm_jax.plotting import plot

flags.DEFINE_string("checkpoint", None, "Hugging Face directory, or training workdir, its "
                    "checkpoints/ or a step directory (required unless --dump_prompts).")
flags.DEFINE_string("tokenizer", None, "tokenizer.json or its directory (default: the one in "
                    "--checkpoint, else the training data's).")
flags.DEFINE_bool("use_ema", True, "Use the EMA weights of a training checkpoint.")
flags.DEFINE_string("data_dir", None, "<data_dir>/<benchmark>/<split>.jsonl|.parquet; default: "
                    "the Hugging Face hub via `datasets` (needs network or its cache).")
flags.DEFINE_string("run_only", None, "Comma-separated benchmarks of "
                    + ",".join(tasks.benchmarks()) + " (default: "
                    + ",".join(tasks.DEFAULT) + ").")
flags.DEFINE_integer("limit", None, "Evaluate only the first N items of each benchmark.")
flags.DEFINE_string("output", None, "Results JSON (a sweep also writes <stem>_sweep.md/.png).")
flags.DEFINE_string("dump_prompts", None, "Write every prompt as JSON Lines {benchmark, "
                    "index, condition, prompt} to this file and exit (no model is loaded).")
if "overwrite" not in flags.FLAGS:  # plot.py defines the same flag; tests import both
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output / --dump_prompts file.")
flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
flags.DEFINE_integer("max_new_tokens", None, "Cap on generated tokens of open-ended benchmarks "
                     "(default: none, each row generates to the end of the context, as the "
                     "reference).")
flags.DEFINE_integer("aime_samples", tasks.AIME_SAMPLES, "Samples per AIME problem "
                     "(temperature 0.6); the reference draws 256.")
flags.DEFINE_enum("math_scorer", "reference", list(scoring.MATH_SCORERS), "MATH answer check: "
                  "'reference' (math-verify on the bare strings, as the published table) or "
                  "'latex' (the strings wrapped in $...$ first; see docs/evaluation.md).")
flags.DEFINE_integer("seed", 0, "PRNG seed for sampling (AIME).")
flags.DEFINE_integer("H_cycles", None, "Test-time override of H_cycles (experiment knob).")
flags.DEFINE_integer("L_cycles", None, "Test-time override of L_cycles (experiment knob).")
flags.DEFINE_list("sweep_cycles", None, "Depths to evaluate at, e.g. 1,2,3,4.")
flags.DEFINE_enum("sweep_axis", "H_cycles", ["H_cycles", "L_cycles"], "What --sweep_cycles sets.")
flags.DEFINE_bool("progress", True, "Show a progress bar per generation stream.")
flags.DEFINE_list("draft_cycles", None, "Speculative decoding: H,L cycles of the draft (the same "
                  "weights at a shallower depth), e.g. 1,1; greedy output unchanged.")
flags.DEFINE_integer("draft_len", 4, "Tokens drafted per verification (--draft_cycles).")


def check_new_file(flag: str, path: str, overwrite: bool) -> None:
  """A file this command will write: never a directory, an existing file only with
  --overwrite, and in a folder this process may write (checked before the evaluation, whose
  results would otherwise be lost)."""
  if os.path.isdir(path):
    raise app.UsageError(f"--{flag}={path} is a directory; expected a file path")
  if os.path.lexists(path) and not overwrite:
    raise app.UsageError(f"--{flag}={path} exists; pass --overwrite to replace it")
  atomic.check_writable(path, f"--{flag}")


def sweep_table(axis: str, by_depth: dict[int, dict[str, dict]]) -> str:
  """Benchmarks as rows, depths as columns, scores in percent."""
  depths = list(by_depth)
  names = list(next(iter(by_depth.values())))
  lines = ["| benchmark (metric) | " + " | ".join(f"{axis}={d}" for d in depths) + " |",
           "|---|" + "---|" * len(depths)]
  for name in names:
    metric = by_depth[depths[0]][name]["metric"]
    cells = " | ".join(f"{100 * by_depth[d][name]['score']:.1f}" for d in depths)
    lines.append(f"| {name} ({metric}) | {cells} |")
  return "\n".join(lines)


def check_flags(f: flags.FlagValues) -> list[int]:
  """Every flag error before any work; the depths of --sweep_cycles."""
  if f.sweep_cycles and not f.output:
    raise app.UsageError("--sweep_cycles needs --output (the table and PNG go beside it)")
  try:
    depths = [int(d) for d in f.sweep_cycles or []]
  except ValueError as e:
    raise app.UsageError(f"--sweep_cycles={f.sweep_cycles}: expected integers ({e})") from e
  if any(d < 1 for d in depths):
    raise app.UsageError(f"--sweep_cycles={','.join(f.sweep_cycles)}: cycle counts must be >= 1")
  for name in ("H_cycles", "L_cycles", "limit", "batch_size", "max_new_tokens", "aime_samples"):
    value = getattr(f, name)
    if value is not None and value < 1:
      raise app.UsageError(f"--{name}={value} must be >= 1" + (
          " (leave it unset to generate to the end of the context)"
          if name == "max_new_tokens" else ""))
  try:
    speculative.parse_cycles(f.draft_cycles, f.draft_len)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if f.dump_prompts is None and f.checkpoint is None:
    raise app.UsageError("--checkpoint is required (unless --dump_prompts)")
  for flag in ("output", "dump_prompts"):
    if getattr(f, flag):
      check_new_file(flag, getattr(f, flag), f.overwrite)
  if f.output:
    stem = os.path.splitext(f.output)[0]
    for extra in ([stem + "_sweep.md", stem + "_sweep.png"] if depths else []):
      check_new_file("output", extra, f.overwrite)
  return depths


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  depths = check_flags(f)
  try:
    benches = tasks.select(f.run_only, f.aime_samples, f.math_scorer)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    if f.data_dir is not None:
      needed = runner.needed_files(benches)
      sources.check_local(f.data_dir, needed)
      inputs = {os.path.realpath(sources.local_file(f.data_dir, folder, split))
                for _, folder, split, _ in needed}
      for flag in ("output", "dump_prompts"):
        if getattr(f, flag) and os.path.realpath(getattr(f, flag)) in inputs:
          raise app.UsageError(f"--{flag}={getattr(f, flag)} is one of the benchmark files "
                               "this run reads; refusing to replace it")
    data = {b.name: runner.load_examples(b, f.data_dir, f.limit) for b in benches}
    if f.dump_prompts:
      with atomic.file(f.dump_prompts) as out:
        for b in benches:
          for record in runner.prompt_records(b, *data[b.name]):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
      print(f"wrote {sum(len(data[b.name][0]) for b in benches)} prompts to {f.dump_prompts}")
      return
    config, execution, variables = model_loading.load_model(f.checkpoint, use_ema=f.use_ema)
    tok = model_loading.load_tokenizer(f.checkpoint, f.tokenizer)
  except FileNotFoundError as e:
    raise app.UsageError(f"--checkpoint={f.checkpoint}: {e}") from e
  base = config.replace(**{k: v for k, v in (("H_cycles", f.H_cycles),
                                              ("L_cycles", f.L_cycles)) if v})
  settings: dict[str, Any] = {
      "checkpoint": f.checkpoint, "use_ema": f.use_ema, "data_dir": f.data_dir,
      "limit": f.limit, "batch_size": f.batch_size, "max_new_tokens": f.max_new_tokens,
      "aime_samples": f.aime_samples, "math_scorer": f.math_scorer, "seed": f.seed,
      "H_cycles": base.H_cycles, "L_cycles": base.L_cycles, "max_seq_len": base.max_seq_len}

  def run(cfg) -> dict[str, dict]:
    return runner.evaluate(cfg, variables, tok, benches, f.data_dir, limit=f.limit,
                           batch_size=f.batch_size, max_new_tokens=f.max_new_tokens,
                           rng=jax.random.PRNGKey(f.seed), progress=f.progress, loaded=data,
                           draft_cycles=speculative.parse_cycles(f.draft_cycles, f.draft_len),
                           draft_len=f.draft_len, execution=execution)

  if not depths:
    results = run(base)
    print(runner.markdown_table(results), flush=True)
    if f.output:
      atomic.write_json(f.output, {"settings": settings, "results": results})
      print(f"wrote {f.output}")
    return
  by_depth: dict[int, dict[str, dict]] = {}
  for d in depths:
    print(f"[eval] {f.sweep_axis}={d}", file=sys.stderr, flush=True)
    by_depth[d] = run(base.replace(**{f.sweep_axis: d}))
  table = sweep_table(f.sweep_axis, by_depth)
  print(table, flush=True)
  stem = os.path.splitext(f.output)[0]
  atomic.write_json(f.output, {"settings": settings, "sweep": {
      "axis": f.sweep_axis, "values": depths,
      "results": {str(d): r for d, r in by_depth.items()}}})
  atomic.write_text(stem + "_sweep.md", table + "\n")
  curves = {name: {d: {"score": by_depth[d][name]["score"]} for d in depths}
            for name in by_depth[depths[0]]}
  plot(curves, ["score"], stem + "_sweep.png", xlabel=f.sweep_axis, marker="o")
  print(f"wrote {f.output}, {stem}_sweep.md, {stem}_sweep.png")


if __name__ == "__main__":
  cli.run(main)
