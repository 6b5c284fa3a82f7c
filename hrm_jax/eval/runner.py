"""Evaluation: benchmark items -> prompts -> the generation engine (`generation.stream`) -> scores.

Benchmarks with the same generation settings (`tasks.GenSettings`) share one stream, so the
five one-token multiple-choice benchmarks run through the engine together. Every row has its
own budget, as in the reference engine: the rest of the context after its prompt (or the
benchmark's fixed count, or the --max_new_tokens cap), and a prompt that does not fit the
context gets an empty output, scored as invalid. AIME's n samples per problem are n rows.
Within a stream requests are sorted by prompt length (longest first: the biggest shape
compiles and runs first, so memory problems show at once); the engine keeps `batch_size`
rows busy, refilling each as its answer ends.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax import generation, speculative
from hrm_jax.eval import sources, tasks
from hrm_jax.progress import track
from hrm_jax.tokenizer import Tokenizer

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------------------

def read_split(bench: tasks.Benchmark, split: sources.Split,
               data_dir: Optional[str]) -> tuple[list[tuple[str, dict]], str]:
  """([(where, row)], where) of one split: the local file under data_dir (rows named by
  file:line), else the hub (by row index)."""
  if data_dir is None:
    return [(f"{split.hub_name}: row {i}", r)
            for i, r in enumerate(sources.read_hub(split))], split.hub_name
  path = sources.local_file(data_dir, bench.folder, split)
  if path is None:
    sources.check_local(data_dir, [(bench.name, bench.folder, split, bench.columns)])
  return sources.read_labelled(path), path


def load_examples(bench: tasks.Benchmark, data_dir: Optional[str], limit: Optional[int] = None
                  ) -> tuple[list[tasks.Example], list[tasks.Example]]:
  """(evaluated examples, the first `limit` of the eval split; shot examples: the first
  `bench.shots` rows of the shot split, or all of them for per-subject shots)."""
  rows, where = read_split(bench, bench.eval_split, data_dir)
  if limit is not None:
    rows = rows[:limit]
  if not rows:
    raise sources.EvalDataError(f"{bench.name}: {where} has no rows")
  examples = [bench.parse(r, at) for at, r in rows]
  shots: list[tasks.Example] = []
  if bench.shot_split is not None and bench.shots > 0:
    shot_rows, _ = read_split(bench, bench.shot_split, data_dir)
    if not bench.macro_by_group:
      shot_rows = shot_rows[:bench.shots]
    shots = [bench.parse(r, at) for at, r in shot_rows]
  return examples, shots


def needed_files(benches: Sequence[tasks.Benchmark]) -> list[tuple[str, str, sources.Split,
                                                                   Sequence[str]]]:
  out = []
  for b in benches:
    out.append((b.name, b.folder, b.eval_split, b.columns))
    if b.shot_split is not None and b.shots > 0:
      out.append((b.name, b.folder, b.shot_split, b.columns))
  return out


def prompt_records(bench: tasks.Benchmark, examples: Sequence[tasks.Example],
                   shots: Sequence[tasks.Example]) -> list[dict[str, Any]]:
  """One record per item (AIME: per problem, not per sample): what --dump_prompts writes."""
  return [{"benchmark": bench.name, "index": i, "condition": bench.condition,
           "prompt": tasks.prompt(bench, ex, shots)} for i, ex in enumerate(examples)]


# --- prompts -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Prompts:
  """The token prompts of one benchmark and each row's generation budget (0: the prompt
  does not fit the window and its output is empty)."""
  ids: list[list[int]]
  max_new: list[int]
  shots_used: list[int]
  window: int  # prompt + generation fit in it: the reference's context, or max_seq_len

  @property
  def too_long(self) -> int:
    return sum(n == 0 for n in self.max_new)


def row_budget(settings: tasks.GenSettings, window: int, prompt_len: int,
               cap: Optional[int] = None) -> int:
  """New tokens of one row: the rest of the window (or the fixed count, if smaller), at most
  `cap` for open-ended generation; 0 when the prompt fills the window."""
  if prompt_len >= window:
    return 0
  new = window - prompt_len
  if settings.max_new_tokens is not None:
    new = min(new, settings.max_new_tokens)
  if cap is not None and settings.open_ended:
    new = min(new, cap)
  return new


def build_prompts(bench: tasks.Benchmark, examples: Sequence[tasks.Example],
                  shots: Sequence[tasks.Example], tok: Tokenizer, max_seq_len: int,
                  cap: Optional[int] = None) -> Prompts:
  """boq + condition + prompt + eoq per item, each with its own budget in the window
  min(reference context, max_seq_len). Shots are never dropped to fit."""
  window = min(bench.settings.context, max_seq_len)
  out = Prompts([], [], [], window)
  for ex in examples:
    ids = tok.format_prompt(tasks.prompt(bench, ex, shots), bench.condition)
    out.ids.append(ids)
    out.max_new.append(row_budget(bench.settings, window, len(ids), cap))
    out.shots_used.append(len(tasks.shot_pool(bench, shots, ex)))
  return out


# --- generation --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
  bench: str
  item: int
  prompt: tuple[int, ...]
  max_new: int


def run_stream(config: ModelConfig, variables: dict, tok: Tokenizer, settings: tasks.GenSettings,
               requests: Sequence[Request], batch_size: int, rng: jax.Array, desc: str,
               progress: bool = True, draft_cycles: Optional[Sequence[int]] = None,
               draft_len: int = 4, log: Log = _stderr, execution: Execution = Execution()
               ) -> list[str]:
  """Completion text of every request (eoa removed, at most its own `max_new` tokens; empty
  for a request with no budget), in request order. draft_cycles: speculative decoding
  (`generation.generate`), its statistics logged at the end."""
  live = sorted((i for i, r in enumerate(requests) if r.max_new > 0),
                key=lambda i: -len(requests[i].prompt))
  texts: list[str] = [""] * len(requests)
  if not live:
    return texts
  stats = speculative.Stats()
  answers = generation.stream(
      config, variables, [requests[i].prompt for i in live], [requests[i].max_new for i in live],
      execution=execution, temperature=settings.temperature, eos_id=tok.eoa_id, rng=rng,
      batch_size=batch_size, draft_cycles=draft_cycles, draft_len=draft_len, stats=stats)
  for j, out in track(answers, len(requests), desc, progress, done=len(requests) - len(live)):
    texts[live[j]] = tok.decode(out[:-1] if out and out[-1] == tok.eoa_id else out)
  if draft_cycles is not None:
    log(f"[eval] {desc}: {stats.summary()}")
  return texts


def aggregate(bench: tasks.Benchmark, examples: Sequence[tasks.Example],
              outputs: Sequence[list[str]]) -> dict[str, Any]:
  """Mean of each item metric (MMLU, MMLU-Pro: macro-average over subjects or categories,
  plus the micro average and each group)."""
  per_item = [bench.score(ex, outs) for ex, outs in zip(examples, outputs)]
  names = list(per_item[0])
  result: dict[str, Any] = {}
  if bench.macro_by_group:
    groups: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for ex, scores in zip(examples, per_item):
      groups[ex.group].append(scores)
    by_group = {g: {m: float(np.mean([s[m] for s in rows])) for m in names}
                for g, rows in sorted(groups.items())}
    metrics = {m: float(np.mean([v[m] for v in by_group.values()])) for m in names}
    metrics["micro_accuracy"] = float(np.mean([s["accuracy"] for s in per_item]))
    result["groups"] = {g: v[bench.metric] for g, v in by_group.items()}
  else:
    metrics = {m: float(np.mean([s[m] for s in per_item])) for m in names}
  if "valid" in names:  # sampled (AIME): valid votes and the largest vote of each problem
    result["valid_votes"] = [int(s["valid"]) for s in per_item]
    result["consensus_votes"] = [int(s["consensus"]) for s in per_item]
  result.update(metric=bench.metric, score=metrics[bench.metric], n=len(examples),
                metrics=metrics)
  return result


def evaluate(config: ModelConfig, variables: dict, tok: Tokenizer,
             benches: Sequence[tasks.Benchmark], data_dir: Optional[str], *,
             limit: Optional[int] = None, batch_size: int = 8,
             max_new_tokens: Optional[int] = None, rng: Optional[jax.Array] = None,
             progress: bool = True, log: Log = _stderr,
             loaded: Optional[dict[str, tuple[list, list]]] = None,
             draft_cycles: Optional[Sequence[int]] = None, draft_len: int = 4,
             execution: Execution = Execution()) -> dict[str, dict]:
  """Scores of every benchmark: {name: {metric, score, n, metrics, ...}}; the model runs as
  `execution` says (a checkpoint's own: `model_loading.load_model`).

  `loaded` ({name: (examples, shots)}) reuses data already read (the depth sweep).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  if max_new_tokens is not None and max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1 (None: to the context)")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if data_dir is not None and loaded is None:
    sources.check_local(data_dir, needed_files(benches))
  data = loaded if loaded is not None else {
      b.name: load_examples(b, data_dir, limit) for b in benches}
  prompts = {b.name: build_prompts(b, *data[b.name], tok, config.max_seq_len, max_new_tokens)
             for b in benches}
  for b in benches:
    p = prompts[b.name]
    if p.window < b.settings.context:
      log(f"[eval] {b.name}: the model's max_seq_len={config.max_seq_len} is below the "
          f"reference context {b.settings.context}; prompt + generation fit in {p.window}")
    if p.too_long:
      log(f"[eval] {b.name}: {p.too_long}/{len(p.ids)} prompts do not fit the context of "
          f"{p.window} tokens: empty outputs, scored as invalid (as the reference)")
  streams: dict[tasks.GenSettings, list[tasks.Benchmark]] = collections.defaultdict(list)
  for b in benches:
    streams[b.settings].append(b)
  results: dict[str, dict] = {}
  for s, (settings, group) in enumerate(streams.items()):
    requests = [Request(b.name, i, tuple(ids), new)
                for b in group
                for i, (ids, new) in enumerate(zip(prompts[b.name].ids, prompts[b.name].max_new))
                for _ in range(settings.samples)]
    start = time.perf_counter()
    texts = run_stream(config, variables, tok, settings, requests, batch_size,
                       jax.random.fold_in(rng, s), "+".join(b.name for b in group), progress,
                       draft_cycles, draft_len, log, execution)
    seconds = time.perf_counter() - start
    outputs: dict[str, list[list[str]]] = {
        b.name: [[] for _ in prompts[b.name].ids] for b in group}
    for req, text in zip(requests, texts):
      outputs[req.bench][req.item].append(text)
    for b in group:
      examples = data[b.name][0]
      p = prompts[b.name]
      results[b.name] = {
          **aggregate(b, examples, outputs[b.name]),
          "condition": b.condition, "shots": b.shots,
          "shots_used_mean": float(np.mean(p.shots_used)), "context": p.window,
          "reference_context": b.settings.context, "too_long": p.too_long,
          "settings": dataclasses.asdict(settings),
          "stream_items_per_s": len(requests) / max(seconds, 1e-9),
          "examples": [{"output": outs[0], "gold": ex.gold}
                       for ex, outs in zip(examples[:3], outputs[b.name][:3])],
      }
  return {b.name: results[b.name] for b in benches}


def markdown_table(results: dict[str, dict]) -> str:
  """| benchmark | metric | score | n | with scores in percent; a sampled benchmark (AIME)
  gets a row per maj_pass@k / pass@k, its metric naming the samples per item."""
  lines = ["| benchmark | metric | score | n |", "|---|---|---|---|"]
  for name, r in results.items():
    samples = r.get("settings", {}).get("samples", 1)
    if samples == 1:
      lines.append(f"| {name} | {r['metric']} | {100 * r['score']:.1f} | {r['n']} |")
      continue
    for metric, value in r["metrics"].items():
      if "@" in metric:
        lines.append(f"| {name} | {metric} ({samples} samples) | {100 * value:.1f} | {r['n']} |")
  return "\n".join(lines)
