"""Architecture ablations: size matching, one resumable run per (arch, seed), summaries.

The anchor is the config's HRM model. Every other arch gets the same data, steps, tokens and
lr schedule, and the `n_layers` (hence layers per stack) whose parameter count
(`by="params"`) or mean training FLOPs per token (`by="flops"`, truncated backward and the
bp_steps warm-up counted, `hrm_jax.flops`) is closest to the anchor's. A run is a normal
training run (`train.loop.train`) in its own workdir; when it ends, its kept checkpoints are
evaluated (held-out greedy exact match, EMA weights) and `result.json` is written atomically,
so a rerun skips finished runs and resumes interrupted ones from their checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrm_jax import atomic
from hrm_jax import flops as flops_lib
from hrm_jax import native_weights
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models import ARCHS, REGISTRY, LanguageModel, registry, spec_of
from hrm_jax.params import count_params
from hrm_jax.train.bp_schedule import BpSchedule, bp_steps_at

MATCH_BY = ("params", "flops")
# Named variants for --archs: (arch, ModelConfig fields) over the anchor, the reference's
# ablation switches. A variant of the anchor's arch keeps the anchor's size.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "hrm_causal": ("hrm", {"attn_type": "causal"}),
    "hrm_post_norm": ("hrm", {"norm_type": "post"}),
    "hrm_no_pos_emb": ("hrm", {"pos_emb_type": "none"}),
    "hrm_H_post_norm": ("hrm", {"H_override": "norm_type=post"}),
}
NAMES = ARCHS + tuple(VARIANTS)
RESULT_FILE = "result.json"
SWEEP_FILE = "sweep.json"
ALL = "all"  # the mean over tasks


# --- sizes ------------------------------------------------------------------------------

def param_count(config: ModelConfig) -> int:
  """Parameters of `config`, from abstract shapes (nothing is allocated)."""
  spec = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  batch = {"inputs": spec, "positions": spec, "segment_ids": spec,
           "prefix_mask": jax.ShapeDtypeStruct((1, 8), jnp.bool_)}
  shapes = jax.eval_shape(LanguageModel(config, Execution(unroll_scans=False)).init,
                          jax.random.PRNGKey(0), batch)
  return count_params(shapes["params"])


def flops_per_step(config: ModelConfig, seq_len: int, total_steps: int,
                   schedule: BpSchedule = BpSchedule()) -> np.ndarray:
  """[total_steps] training FLOPs per token of steps 1..total_steps (bp_steps schedule)."""
  cache: dict[int, float] = {}
  out = np.empty(total_steps)
  for step in range(1, total_steps + 1):
    bp = bp_steps_at(step, total_steps, config, schedule)
    if bp not in cache:
      cache[bp] = flops_lib.train_flops_per_token(config, seq_len, bp)
    out[step - 1] = cache[bp]
  return out


def mean_train_flops_per_token(config: ModelConfig, seq_len: int, total_steps: int,
                               schedule: BpSchedule = BpSchedule()) -> float:
  """Training FLOPs per token averaged over the whole schedule (= total FLOPs / tokens)."""
  return float(flops_per_step(config, seq_len, total_steps, schedule).mean())


@dataclasses.dataclass(frozen=True)
class Match:
  arch: str  # the run's name: an arch or a VARIANTS name (config.arch is the arch)
  config: ModelConfig
  params: int
  train_flops_per_token: float  # mean over the schedule
  knob: str                     # the size field that was chosen
  value: int


def match_size(anchor: ModelConfig, arch: str, by: str, seq_len: int, total_steps: int,
               max_layers: int = 64, schedule: BpSchedule = BpSchedule()) -> Match:
  """`anchor` as `arch`, with the `n_layers` whose params or train FLOPs/token are closest
  (in log ratio; the smaller model on a tie) to the anchor's. The anchor's own arch keeps its
  size. Architecture defaults (cycles, gradient windows) come from `ModelConfig`'s presets.
  """
  if by not in MATCH_BY:
    raise ValueError(f"--match={by!r}: expected one of {MATCH_BY}")
  if arch not in NAMES:
    raise ValueError(f"--archs: unknown arch {arch!r}; expected one of {NAMES}")
  name = arch
  arch, options = VARIANTS.get(name, (name, {}))
  own = {f.name: getattr(anchor, f.name) for f in dataclasses.fields(anchor)}
  base = own if arch == anchor.arch else {**own, "options": None, **REGISTRY[arch].defaults,
                                          "arch": arch}
  if "H" not in REGISTRY[arch].stacks:  # the anchor's H stack settings have no H to go to
    base["H_override"] = ""
  base.update(options)

  def build(n_layers: int) -> ModelConfig:
    config = ModelConfig(**{**base, "n_layers": n_layers})
    spec_of(config)
    return config

  step = 2 if base["half_layers"] else 1
  if by == "params":
    # Parameters are affine in n_layers (identical layers): count two sizes, extrapolate.
    lo, hi = param_count(build(step)), param_count(build(2 * step))
    measure = lambda c: float(lo + (c.n_layers // step - 1) * (hi - lo))
  else:
    measure = lambda c: mean_train_flops_per_token(c, seq_len, total_steps, schedule)

  target = float(param_count(anchor)) if by == "params" else measure(anchor)
  candidates = ([anchor.n_layers] if arch == anchor.arch
                else list(range(step, max_layers + 1, step)))
  best = None
  for n in candidates:
    c = build(n)
    value = measure(c)
    score = abs(math.log(value / target))
    if best is None or score < best[0] - 1e-12:
      best = (score, c)
    if value > target * 2:  # both measures grow with n_layers
      break
  c = best[1]
  params = param_count(c)
  if by == "params" and params != measure(c):
    raise AssertionError(f"{arch}: parameters not affine in n_layers ({params} vs {measure(c)})")
  return Match(name, c, params, mean_train_flops_per_token(c, seq_len, total_steps, schedule),
               "n_layers", c.n_layers)


# --- runs -------------------------------------------------------------------------------


def read_result(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not JSON ({e}); delete it to redo the evaluation") from e


def run_config(cfg: ml_collections.ConfigDict, match: Match, seed: int, total_steps: int,
               eval_points: int) -> ml_collections.ConfigDict:
  """The training config of one run: the matched model, the ablation budget, the run's seed,
  and a checkpoint at each of `eval_points` evenly spaced steps (kept for evaluation)."""
  run = ml_collections.ConfigDict(cfg.to_dict())
  c = match.config
  fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(ModelConfig)}
  fields.update(dataclasses.asdict(c.options) if c.options is not None else {})
  for name in registry.OPTION_FIELDS:  # the anchor's options are not this arch's
    run.model[name] = None
  for name, value in fields.items():
    if name not in ("arch", "options") and name in run.model:
      run.model[name] = value
  run.model.arch = c.arch
  run.train.total_steps = total_steps
  run.train.max_steps = -1
  run.train.seed = seed
  run.checkpoint.every_steps = max(1, total_steps // eval_points)
  run.checkpoint.keep = eval_points + 1
  run.demo.show_answers = 0
  return run


def checkpoint_steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))


def with_mean(scores: dict[str, float]) -> dict[str, float]:
  return {**scores, ALL: float(np.mean(list(scores.values())))}


def run_one(cfg: ml_collections.ConfigDict, match: Match, seed: int, workdir: str, *,
            total_steps: int, eval_points: int, eval_per_task: int,
            log: Callable[[str], None] = print) -> dict:
  """Train (or resume) one run and evaluate its kept checkpoints; the run's result dict.

  A workdir that already has `result.json` for the same model is returned as is.
  """
  from hrm_jax.train import demo_report, loop  # the training stack, only when running
  done = read_result(workdir)
  if done is not None:
    if registry.model_config_from_dict(done["model_config"]) != match.config:  # same model
      raise ValueError(f"{os.path.join(workdir, RESULT_FILE)} was made by another model "
                       f"config than this ablation's {match.arch} (n_layers="
                       f"{match.config.n_layers}); use another --workdir or delete this run")
    log(f"skip {workdir}: finished ({RESULT_FILE})")
    return done
  run = run_config(cfg, match, seed, total_steps, eval_points)
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  result = loop.train(run, workdir)
  train_s = time.perf_counter() - start
  if result.preempted:
    raise KeyboardInterrupt(f"{workdir}: preempted at step {result.steps_done}; rerun to resume")
  if result.model_config != match.config:
    raise ValueError(f"{workdir}: trained model differs from the planned one "
                     f"({result.model_config} vs {match.config})")
  seq_len = run.data.row_len
  tokens_per_step = run.data.rows * run.data.row_len
  per_step = flops_per_step(match.config, seq_len, total_steps, BpSchedule.of(run.train))
  points = []
  for step in checkpoint_steps(workdir):
    eval_start = time.perf_counter()
    config, variables = native_weights.load(os.path.join(workdir, "checkpoints", str(step)))
    scores, _ = demo_report.exact_match(config, variables, result.demo, eval_per_task)
    points.append({"step": step, "tokens": step * tokens_per_step,
                   "train_flops": float(per_step[:step].sum() * tokens_per_step),
                   "scores": with_mean(scores)})
    log(f"{workdir}: step {step}: exact match {100 * points[-1]['scores'][ALL]:.1f}% (all; "
        f"evaluated in {time.perf_counter() - eval_start:.0f} s)")
  out = {
      "arch": match.arch, "seed": seed, "knob": match.knob, "knob_value": match.value,
      "model_config": match.config.to_dict(), "params": match.params,
      "train_flops_per_token": match.train_flops_per_token, "steps": result.steps_done,
      "tokens": result.steps_done * tokens_per_step,
      "train_flops": float(per_step[:result.steps_done].sum() * tokens_per_step),
      "train_wall_s": train_s, "wall_s": time.perf_counter() - start,
      "eval_per_task": eval_per_task, "points": points, "scores": points[-1]["scores"],
  }
  atomic.write_json(os.path.join(workdir, RESULT_FILE), out)
  return out


def sweep_depth(workdir: str, demo: Any, depths: Sequence[tuple[int, int]], eval_per_task: int,
                log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
  """{"H{h}_L{l}": scores} of a finished HRM run's final EMA weights run at other depths
  (`config.replace(H_cycles=h, L_cycles=l)`); cached in `<workdir>/sweep.json`."""
  from hrm_jax.train import demo_report
  path = os.path.join(workdir, SWEEP_FILE)
  cached: dict[str, Any] = {}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
  config = variables = None
  for h, l in depths:
    key = f"H{h}_L{l}"
    if key in cached and cached[key]["eval_per_task"] == eval_per_task:
      continue
    if config is None:
      config, variables = native_weights.load(workdir)
    scores, _ = demo_report.exact_match(config.replace(H_cycles=h, L_cycles=l), variables, demo,
                                        eval_per_task)
    cached[key] = {"H_cycles": h, "L_cycles": l, "eval_per_task": eval_per_task,
                   "scores": with_mean(scores)}
    log(f"{workdir}: H{h} L{l}: exact match {100 * cached[key]['scores'][ALL]:.1f}% (all)")
    atomic.write_json(path, cached)
  return {f"H{h}_L{l}": cached[f"H{h}_L{l}"]["scores"] for h, l in depths}


# --- summaries --------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(results: Sequence[dict]) -> list[dict]:
  """One row per arch (in first-seen order): size, FLOPs, and per-task mean/std over seeds."""
  by_arch: dict[str, list[dict]] = {}
  for r in results:
    by_arch.setdefault(r["arch"], []).append(r)
  rows = []
  for arch, runs in by_arch.items():
    tasks = list(runs[0]["scores"])
    rows.append({
        "arch": arch, "seeds": [r["seed"] for r in runs], "params": runs[0]["params"],
        "knob": runs[0]["knob"], "knob_value": runs[0]["knob_value"],
        "train_flops_per_token": runs[0]["train_flops_per_token"],
        "train_flops": runs[0]["train_flops"],
        "scores": {t: mean_std([r["scores"][t] for r in runs]) for t in tasks},
    })
  return rows


def difference(results: Sequence[dict], a: str, b: str, task: str = ALL,
               confidence: float = 0.95) -> Optional[dict]:
  """Final exact match of arch `a` minus arch `b` (mean over seeds) with Welch's t interval:
  seeds are independent runs, and the two archs' spreads need not be equal. None unless
  both archs have at least two seeds."""
  from scipy import stats  # a dependency of jax; only the ablation's report needs it
  xa = np.asarray([r["scores"][task] for r in results if r["arch"] == a], np.float64)
  xb = np.asarray([r["scores"][task] for r in results if r["arch"] == b], np.float64)
  if len(xa) < 2 or len(xb) < 2:
    return None
  va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
  diff, se = float(xa.mean() - xb.mean()), math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1)) if se else math.inf
  half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
  return {"a": a, "b": b, "task": task, "diff": diff, "low": diff - half, "high": diff + half,
          "confidence": confidence, "df": float(df), "n_a": len(xa), "n_b": len(xb)}


def difference_line(d: dict) -> str:
  """The difference as a sentence of the report."""
  return (f"{d['a']} - {d['b']} ({d['task']}): {100 * d['diff']:+.1f} points, "
          f"{100 * d['confidence']:.0f}% CI [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
          f"(Welch, {d['n_a']} and {d['n_b']} seeds, df {d['df']:.1f})")


def curve(runs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(training FLOPs, mean, std over seeds) of the 'all' exact match at the shared steps."""
  steps = sorted(set.intersection(*[{p["step"] for p in r["points"]} for r in runs]))
  x, mean, std = [], [], []
  for s in steps:
    pts = [next(p for p in r["points"] if p["step"] == s) for r in runs]
    m, sd = mean_std([p["scores"][ALL] for p in pts])
    x.append(pts[0]["train_flops"])
    mean.append(m)
    std.append(sd)
  return np.array(x), np.array(mean), np.array(std)


def pct(ms: tuple[float, float], n: int) -> str:
  m, s = ms
  return f"{100 * m:.1f}" if n == 1 else f"{100 * m:.1f} ± {100 * s:.1f}"


def markdown_table(rows: Sequence[dict]) -> str:
  """arch | seeds | params | train FLOPs/token | n_layers | per-task exact match (%) | all."""
  tasks = [t for t in rows[0]["scores"] if t != ALL] + [ALL]
  head = ["arch", "seeds", "params", "train MFLOP/token", "n_layers"] + tasks
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    n = len(r["seeds"])
    cells = [r["arch"], str(n), f"{r['params']:,}", f"{r['train_flops_per_token'] / 1e6:.1f}",
             str(r["knob_value"])] + [pct(r["scores"][t], n) for t in tasks]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep_table(sweeps: dict[str, dict[str, dict[str, float]]]) -> str:
  """Rows: depth (H, L); columns: per-task exact match (%) mean ± std over the HRM runs."""
  runs = list(sweeps.values())
  keys = list(runs[0])
  tasks = [t for t in runs[0][keys[0]] if t != ALL] + [ALL]
  lines = ["| H_cycles | L_cycles | " + " | ".join(tasks) + " |",
           "|---|---|" + "---|" * len(tasks)]
  for key in keys:
    h, l = key[1:].split("_L")
    cells = [pct(mean_std([run[key][t] for run in runs]), len(runs)) for t in tasks]
    lines.append(f"| {h} | {l} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
