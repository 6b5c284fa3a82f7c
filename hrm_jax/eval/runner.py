"""The evaluation engine: benchmark items -> prompts -> batched `generate` -> scores.

Benchmarks with the same generation settings (`tasks.GenSettings`) share one stream, so the
five one-token multiple-choice benchmarks run as one sequence of batches. Within a stream
requests are sorted by prompt length (longest first: the biggest shape compiles and runs
first, so memory problems show at once) and the last batch is padded to the batch size with
copies, so `generate`'s length buckets bound the number of compiled shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import tqdm

from hrm_jax.config import ModelConfig
from hrm_jax.decode import generate
from hrm_jax.eval import sources, tasks
from hrm_jax.tokenizer import Tokenizer

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------------------

def read_split(bench: tasks.Benchmark, split: sources.Split,
               data_dir: Optional[str]) -> tuple[list[dict], str]:
  """(rows, where) of one split: the local file under data_dir, else the hub."""
  if data_dir is None:
    return sources.read_hub(split), split.hub_name
  path = sources.local_file(data_dir, bench.folder, split)
  if path is None:
    sources.check_local(data_dir, [(bench.name, bench.folder, split, bench.columns)])
  return sources.read_file(path), path


def load_examples(bench: tasks.Benchmark, data_dir: Optional[str], limit: Optional[int] = None
                  ) -> tuple[list[tasks.Example], list[tasks.Example]]:
  """(evaluated examples, the first `limit` of the eval split; shot examples)."""
  rows, where = read_split(bench, bench.eval_split, data_dir)
  if limit is not None:
    rows = rows[:limit]
  if not rows:
    raise sources.EvalDataError(f"{bench.name}: {where} has no rows")
  examples = [bench.parse(r, f"{where}: row {i}") for i, r in enumerate(rows)]
  shots: list[tasks.Example] = []
  if bench.shot_split is not None and bench.shots > 0:
    shot_rows, shot_where = read_split(bench, bench.shot_split, data_dir)
    shots = [bench.parse(r, f"{shot_where}: row {i}") for i, r in enumerate(shot_rows)]
  return examples, shots


def needed_files(benches: Sequence[tasks.Benchmark]) -> list[tuple[str, str, sources.Split,
                                                                   Sequence[str]]]:
  out = []
  for b in benches:
    out.append((b.name, b.folder, b.eval_split, b.columns))
    if b.shot_split is not None and b.shots > 0:
      out.append((b.name, b.folder, b.shot_split, b.columns))
  return out


# --- prompts -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Prompts:
  """The token prompts of one benchmark and how they were fitted to the context."""
  ids: list[list[int]]
  max_new: list[int]
  shots_used: list[int]
  shots_dropped: int = 0  # items that got fewer shots than the benchmark's count
  truncated: int = 0  # items whose text alone did not fit (cut from the left)


def generation_budget(settings: tasks.GenSettings, max_seq_len: int,
                      cap: Optional[int]) -> tuple[int, int]:
  """(window, fixed new tokens or 0): prompt + new tokens must fit the window."""
  if settings.context is not None:
    return min(settings.context, max_seq_len), 0
  new = settings.max_new_tokens
  if cap is not None and settings.open_ended:
    new = min(new, cap)
  return max_seq_len, new


def build_prompts(bench: tasks.Benchmark, examples: Sequence[tasks.Example],
                  shots: Sequence[tasks.Example], tok: Tokenizer, max_seq_len: int,
                  cap: Optional[int] = None) -> Prompts:
  """boq + condition + (header, shots, item) + eoq per item, dropping shots from the last
  while prompt + generation would exceed the model's context; a text too long even without
  shots keeps its end (the question) and is counted as truncated."""
  window, fixed_new = generation_budget(bench.settings, max_seq_len, cap)
  budget = window - max(fixed_new, 1)
  if budget < 3:
    raise ValueError(f"{bench.name}: context {window} leaves no room for a prompt")
  out = Prompts([], [], [])
  for ex in examples:
    pool = tasks.shot_pool(bench, list(shots), ex)
    k = len(pool)
    ids = tok.format_prompt(tasks.prompt_text(bench, ex, pool), bench.condition)
    while len(ids) > budget and k > 0:
      k -= 1
      ids = tok.format_prompt(tasks.prompt_text(bench, ex, pool[:k]), bench.condition)
    if len(ids) > budget:
      head = 1 + len(tok.condition_tokens(bench.condition))
      ids = ids[:head] + ids[len(ids) - (budget - head):]
      out.truncated += 1
    out.shots_dropped += k < len(pool)
    new = fixed_new or window - len(ids)
    if cap is not None and bench.settings.open_ended:
      new = min(new, cap)
    out.ids.append(ids)
    out.max_new.append(new)
    out.shots_used.append(k)
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
               progress: bool = True) -> list[str]:
  """Completion text of every request (eoa removed), in request order."""
  order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
  texts: list[str] = [""] * len(requests)
  bar = tqdm.tqdm(total=len(requests), desc=desc, unit="item", file=sys.stderr,
                  disable=not progress, smoothing=0.1)
  for b, start in enumerate(range(0, len(order), batch_size)):
    idx = order[start:start + batch_size]
    prompts = [list(requests[i].prompt) for i in idx]
    prompts += [prompts[0]] * (batch_size - len(prompts))  # one batch shape per bucket
    max_new = min(requests[i].max_new for i in idx)
    outs = generate(config, variables, prompts, max_new, settings.temperature, settings.top_p,
                    eos_id=tok.eoa_id, rng=jax.random.fold_in(rng, b))
    for i, out in zip(idx, outs):
      texts[i] = tok.decode([t for t in out if t != tok.eoa_id])
    bar.update(len(idx))
  bar.close()
  return texts


def aggregate(bench: tasks.Benchmark, examples: Sequence[tasks.Example],
              outputs: Sequence[list[str]]) -> dict[str, Any]:
  """Mean of each item metric (MMLU: macro-average over subjects, plus per subject)."""
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
  result.update(metric=bench.metric, score=metrics[bench.metric], n=len(examples),
                metrics=metrics)
  return result


def evaluate(config: ModelConfig, variables: dict, tok: Tokenizer,
             benches: Sequence[tasks.Benchmark], data_dir: Optional[str], *,
             limit: Optional[int] = None, batch_size: int = 8,
             max_new_tokens: Optional[int] = None, rng: Optional[jax.Array] = None,
             progress: bool = True, log: Log = _stderr,
             loaded: Optional[dict[str, tuple[list, list]]] = None) -> dict[str, dict]:
  """Scores of every benchmark: {name: {metric, score, n, metrics, ...}}.

  `loaded` ({name: (examples, shots)}) reuses data already read (the depth sweep).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if data_dir is not None:
    sources.check_local(data_dir, needed_files(benches))
  data = loaded if loaded is not None else {
      b.name: load_examples(b, data_dir, limit) for b in benches}
  prompts = {b.name: build_prompts(b, *data[b.name], tok, config.max_seq_len, max_new_tokens)
             for b in benches}
  for b in benches:
    p = prompts[b.name]
    if p.shots_dropped or p.truncated:
      log(f"[eval] {b.name}: {p.shots_dropped}/{len(p.ids)} prompts got fewer than "
          f"{b.shots} shots and {p.truncated} were truncated to fit max_seq_len="
          f"{config.max_seq_len} (shots used: min {min(p.shots_used)}, max {max(p.shots_used)})")
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
                       jax.random.fold_in(rng, s), "+".join(b.name for b in group), progress)
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
          "shots_used_mean": float(np.mean(p.shots_used)), "shots_dropped": p.shots_dropped,
          "truncated": p.truncated, "settings": dataclasses.asdict(settings),
          "stream_items_per_s": len(requests) / max(seconds, 1e-9),
          "examples": [{"output": outs[0], "gold": ex.gold}
                       for ex, outs in zip(examples[:3], outputs[b.name][:3])],
      }
  return {b.name: results[b.name] for b in benches}


def markdown_table(results: dict[str, dict]) -> str:
  """| benchmark | metric | score | n | with scores in percent."""
  lines = ["| benchmark | metric | score | n |", "|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['metric']} | {100 * r['score']:.1f} | {r['n']} |")
  return "\n".join(lines)
