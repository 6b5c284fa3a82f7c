"""End-of-run report for the demo: exact-match accuracy per task on held-out examples
(generated greedily with the EMA weights, as the reference evaluates) and a few answers."""

from __future__ import annotations

import collections
from typing import Any

from hrm_jax.config import ModelConfig
from hrm_jax.data.demo import DemoData
from hrm_jax.generation import generate
from hrm_jax.train import distributed


def evaluate(result: Any, per_task: int = 32) -> tuple[dict[str, float], list[tuple]]:
  """(task -> exact match, [(task, prompt, gold, answer)]) over held-out demo examples.

  The EMA weights may be sharded over several processes (multi-host training): every
  process gathers them whole and generates the same greedy answers, so no process computes
  on arrays it cannot address. All processes must call this together.
  """
  variables = distributed.gather_to_host(
      {"params": result.state.ema, "buffers": result.state.buffers})
  return exact_match(result.model_config, variables, result.demo, per_task)


def exact_match(config: ModelConfig, variables: dict, demo: DemoData,
                per_task: int = 32) -> tuple[dict[str, float], list[tuple]]:
  """Greedy exact match of `variables` on the first `per_task` held-out examples per task
  (any arch: `generate` recomputes the row for trm, which has no KV cache)."""
  tok = demo.tokenizer()
  examples = []
  counts: collections.Counter = collections.Counter()
  for ex in demo.eval_examples:
    if counts[ex["task"]] < per_task:
      counts[ex["task"]] += 1
      examples.append(ex)
  prompts = [tok.format_prompt(ex["instruction"], ex["condition"]) for ex in examples]
  # Each row's budget is its gold answer plus eoa: a longer answer is wrong either way.
  budgets = [len(tok.encode_text(ex["response"])) + 1 for ex in examples]
  outputs = generate(config, variables, prompts, budgets, eos_id=tok.eoa_id,
                     batch_size=min(len(prompts), 64))
  right: collections.Counter = collections.Counter()
  rows = []
  for ex, out in zip(examples, outputs):
    answer = tok.decode([t for t in out if t != tok.eoa_id])
    right[ex["task"]] += answer == ex["response"]
    rows.append((ex["task"], ex["instruction"], ex["response"], answer))
  return {task: right[task] / n for task, n in counts.items()}, rows


def report(result: Any, n: int, show: bool = True) -> None:
  """Print the per-task table and `n` answers (`show`: on this process; every process of a
  multi-host run calls this, see `evaluate`)."""
  scores, rows = evaluate(result)
  if not show:
    return
  print("\nHeld-out exact match (greedy, EMA weights):\n")
  print("| task | exact match |\n|---|---|")
  for task, score in scores.items():
    print(f"| {task} | {100 * score:.1f}% |")
  print(f"| all | {100 * sum(scores.values()) / len(scores):.1f}% |\n")
  print("Answers (sums and products are written units digit first, 7074 as 4707):")
  shown: collections.Counter = collections.Counter()
  for task, prompt, gold, answer in rows:
    if shown[task] < max(1, n // len(scores)) and sum(shown.values()) < n:
      shown[task] += 1
      mark = "ok" if answer == gold else "wrong"
      print(f"  {prompt}  ->  {answer!r}  (expected {gold!r}, {mark})")


def next_commands(workdir: str) -> str:
  """What to try after the demo, printed at its end."""
  return "\n".join([
      "\nNext:",
      f"  python experiments/generate.py --checkpoint={workdir} --prompt='673+34' "
      "--condition=synth   # ask it",
      f"  python experiments/plot.py --workdir={workdir}   # loss and accuracy curves",
      "  python experiments/ablate.py --archs=hrm,transformer --seeds=3   # HRM against a "
      "transformer, ~40 min (docs/ablation.md)",
      "  python experiments/eval.py --checkpoint=DIR --data_dir=BENCHMARKS   # the paper's "
      "benchmarks on a real checkpoint (docs/evaluation.md)"])
