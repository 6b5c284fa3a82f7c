"""Train-step throughput: tokens/s, MFU and memory of hrm_jax's jitted step; on CPU also
transformers' PyTorch HrmTextForCausalLM step on the same shape, in the same run.

    python benchmarks/train_step.py                       # the demo shape, vs transformers
    python benchmarks/train_step.py --config=hrm1b --layers_per_stack=2 --rows=1  # on a GPU

Default shape (the demo shape of the issue): hidden 256, 4 heads, 2 layers per stack, H2 L3,
batch 8 x 256, vocab 256, bp_steps 5 (transformers' default L_bp_cycles [2] also gives 5
gradient-carrying passes of 8). The hrm1b step's memory on TPU, GPU and CPU meshes is
benchmarks/aot_compile.py.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import glob  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import hrm_jax  # noqa: E402
from hrm_jax import cli  # noqa: E402
from hrm_jax import benchmarking  # noqa: E402
from hrm_jax import flops as flops_lib  # noqa: E402
from hrm_jax import optim  # noqa: E402
import hrm_jax.execution  # noqa: E402
from hrm_jax import sharding as sharding_lib  # noqa: E402
from hrm_jax.train import metrics as metrics_lib  # noqa: E402
from hrm_jax.train import state as state_lib  # noqa: E402
from hrm_jax.train.step import jit_train_step  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "", "Take the model shape from this training config "
                              "(experiments/configs/NAME.py); flags below override it.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "hidden size")
_HEADS = flags.DEFINE_integer("heads", 4, "attention heads")
_LAYERS = flags.DEFINE_integer("layers_per_stack", 2, "layers per stack")
_VOCAB = flags.DEFINE_integer("vocab", 256, "vocab size")
_ROWS = flags.DEFINE_integer("rows", 8, "rows per batch")
_ROW_LEN = flags.DEFINE_integer("row_len", 256, "tokens per row")
_BP = flags.DEFINE_integer("bp_steps", 5, "truncated-backprop window")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype (default: float32 on CPU, else bf16)")
_REMAT = flags.DEFINE_enum("remat", "none", hrm_jax.execution.REMAT_POLICIES, "remat policy")
_SCOPE = flags.DEFINE_enum("remat_scope", "layer", hrm_jax.execution.REMAT_SCOPES,
                           "remat scope")
_UNROLL = flags.DEFINE_enum("unroll", "auto", ["auto", "true", "false"],
                            "unroll_scans; auto = the config's per-backend default")
_ATTENTION = flags.DEFINE_enum("attention", "", ["", *hrm_jax.execution.ATTENTION_IMPLS],
                               "attention_impl (default: Execution's)")
_STEPS = flags.DEFINE_integer("steps", 15, "timed steps of each of hrm_jax, transformers and the "
                              "matmul floor, alternating step by step; each figure is a median")
_FLOOR = flags.DEFINE_bool("floor", True, "also time the step's matmuls alone (every "
                           "dot_general of the compiled step, forward and backward, in one "
                           "compiled program)")
_TORCH = flags.DEFINE_bool("torch", True, "also time transformers on CPU")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads for transformers; 0 = one per core. On a loaded "
    "machine compare 1 with XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
    "intra_op_parallelism_threads=1' (both single-threaded).")
_PROFILE = flags.DEFINE_bool("profile", False, "print where each step's time goes: XLA:CPU "
                             "per-op times (jax.profiler) and torch.profiler's, by category")
_MEMORY_BP = flags.DEFINE_list("memory_bp_steps", ["1", "5", "full"],
                               "bp_steps values whose compiled step temporaries are printed")


def execution() -> hrm_jax.Execution:
  dtype = _DTYPE.value or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
  unroll = None if _UNROLL.value == "auto" else _UNROLL.value == "true"
  ex = hrm_jax.Execution(dtype=dtype, remat_policy=_REMAT.value, remat_scope=_SCOPE.value,
                         unroll_scans=unroll)
  return ex.replace(attention_impl=_ATTENTION.value) if _ATTENTION.value else ex


def model_config() -> hrm_jax.ModelConfig:
  common = dict(n_layers=2 * _LAYERS.value)
  if _CONFIG.value:
    from experiments import configs
    m = configs.get(_CONFIG.value).model
    return hrm_jax.model_config(m.size, m.arch, vocab_size=m.vocab_size or 65536, **common)
  return hrm_jax.model_config("B", "hrm", hidden_size=_HIDDEN.value, num_heads=_HEADS.value,
                              vocab_size=_VOCAB.value, **common)


def make_batch(cfg, rows, row_len, seed=0):
  """Rows packing 64-token examples: 32-token prompts, 32-token responses."""
  rng = np.random.default_rng(seed)
  idx = np.arange(row_len)
  seg = (idx // 64 + 1)[None].repeat(rows, 0)
  pos = (idx % 64)[None].repeat(rows, 0)
  inputs = rng.integers(1, cfg.vocab_size, (rows, row_len))
  prefix = pos < 32
  labels = np.where(prefix, -100, np.roll(inputs, -1, 1))
  return {"inputs": inputs.astype(np.int32), "positions": pos.astype(np.int32),
          "segment_ids": seg.astype(np.int32), "prefix_mask": prefix,
          "labels": labels.astype(np.int32)}


def build_step(cfg, mesh, bp_steps):
  model = hrm_jax.LanguageModel(cfg, execution())
  tx = optim.adam_atan2(optim.warmup_cosine(1e-3, 10, 1000), 0.9, 0.95, 0.1)
  shardings = state_lib.state_shardings(model, tx, mesh)
  train_cfg = ml_collections.ConfigDict(dict(microbatches=1, ema_decay=0.999,
                                             skip_nonfinite=False, loss_chunk=0))
  return model, tx, shardings, jit_train_step(model, tx, train_cfg, shardings, mesh, bp_steps)


def jax_runner(cfg):
  """(one-step thunk, compile seconds, the compiled step, its state and batch)."""
  mesh = sharding_lib.make_mesh((1, -1, 1))
  model, tx, shardings, fn = build_step(cfg, mesh, _BP.value)
  state = state_lib.init_state(model, tx, jax.random.PRNGKey(0), shardings)
  batch = jax.device_put(make_batch(cfg, _ROWS.value, _ROW_LEN.value),
                         sharding_lib.batch_sharding(mesh))
  start = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  held = {"state": state}

  def step():
    held["state"], metrics = compiled(held["state"], batch)  # the state is donated
    return metrics

  jax.block_until_ready(step())
  return step, compile_s, fn, held, batch


def floor_runner(fn, state, batch):
  """(thunk running every dot_general of the step alone, their FLOPs, the dots)."""
  dots = benchmarking.dots_of(fn, state, batch)
  run, args = benchmarking.dots_program(dots)
  jax.block_until_ready(run(*args))
  return (lambda: run(*args)), sum(d.flops for d in dots), dots


def step_temporaries(cfg, state, batch, bp_steps):
  """Compiled temporaries (bytes) of the train step at `bp_steps`: what the backward keeps."""
  mesh = sharding_lib.make_mesh((1, -1, 1))
  _, _, _, fn = build_step(cfg, mesh, bp_steps)
  mem = fn.lower(state, batch).compile().memory_analysis()
  return None if mem is None else mem.temp_size_in_bytes


def grad_temporaries(cfg, batch, bp_steps):
  """Compiled temporaries (bytes) of the loss gradient alone at `bp_steps` (no optimizer)."""
  model = hrm_jax.LanguageModel(cfg, execution())
  inputs = {k: v for k, v in batch.items() if k != "labels"}
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs)
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(params, rest):
    logits = model.apply({**rest, "params": params}, inputs, bp_steps=bp_steps)
    return hrm_jax.loss_and_metrics(logits, batch["labels"], inputs["segment_ids"])[0]

  mem = jax.jit(jax.grad(loss)).lower(variables["params"], rest).compile().memory_analysis()
  return None if mem is None else mem.temp_size_in_bytes


def torch_runner(cfg):
  """A thunk running one transformers training step (AdamW), after one warm-up step."""
  import torch
  import transformers
  from hrm_jax import hf
  torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count() or 1)
  variables = hrm_jax.LanguageModel(cfg).init(jax.random.PRNGKey(0),
                                              state_lib.example_batch(1, 8))
  with tempfile.TemporaryDirectory() as d:
    hf.save(os.path.join(d, "m"), cfg, variables)
    model = transformers.HrmTextForCausalLM.from_pretrained(os.path.join(d, "m"),
                                                            attn_implementation="sdpa")
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
  b = make_batch(cfg, _ROWS.value, _ROW_LEN.value)
  # transformers has no packed-row PrefixLM mask: each row is one example with its prompt
  # marked by token_type_ids, the closest equivalent work.
  inputs = torch.tensor(b["inputs"], dtype=torch.long)
  types = torch.tensor(b["prefix_mask"].astype(np.int64))
  labels = torch.tensor(b["labels"], dtype=torch.long)

  def step():
    out = model(input_ids=inputs, token_type_ids=types, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  step()
  return step


# What each op of a step is for, from its name stack (XLA: the op_name metadata of the HLO
# instruction; PyTorch: the aten op), checked in this order.
CATEGORIES = (("optimizer", ("adam", "optim", "ema", "clip", "apply_updates", "global_norm")),
              ("loss and head", ("loss", "log_softmax", "logsumexp", "lm_head", "cross_entropy",
                                 "nll")),
              ("attention (mask, softmax, RoPE)", ("attn", "attention", "softmax", "rope",
                                                   "mask", "sdpa")),
              ("norms", ("rms_norm", "norm")),
              ("mlp (SwiGLU)", ("mlp", "silu", "swiglu")))


def category(opcode: str, name: str) -> str:
  name = name.lower()
  if opcode in ("dot", "convolution") or "dot_general" in name or "matmul" in name or \
      opcode in ("mm", "bmm", "addmm", "linear", "matmul"):
    return "matmuls"
  if opcode in ("copy", "transpose", "copy-start", "copy-done", "bitcast"):
    return "layout copies"
  for cat, keys in CATEGORIES:
    if any(k in name for k in keys):
      return cat
  return "other"


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """instruction name -> (opcode, op_name metadata) for every instruction of an HLO module."""
  ops = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$", line)
    if not m:
      continue
    rest = m.group(2)
    if rest.startswith("("):  # a tuple shape: skip its balanced parentheses
      depth = 0
      for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
          rest = rest[i + 1:]
          break
    else:
      rest = rest.split(" ", 1)[1] if " " in rest else ""
    op = re.match(r"\s*([\w\-]+)\(", rest)
    meta = re.search(r'op_name="([^"]*)"', line)
    if op:
      ops[m.group(1)] = (op.group(1), meta.group(1) if meta else "")
  return ops


def xla_profile(compiled_step, step, steps: int) -> dict[str, float]:
  """ms per step by category: XLA:CPU's per-op trace events over `steps` runs of `step`."""
  ops = hlo_ops(compiled_step.as_text())
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      for _ in range(steps):
        jax.block_until_ready(step())
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data = jax.profiler.ProfileData.from_file(paths[0])
  totals: dict[str, float] = {}
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        base = event.name.split(":")[0]
        if base in ops:
          cat = category(*ops[base])
          totals[cat] = totals.get(cat, 0.0) + event.duration_ns / 1e6 / steps
  return totals


def torch_profile(step, steps: int) -> dict[str, float]:
  """ms per step by category: torch.profiler's self CPU time of each aten op."""
  import torch
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  totals: dict[str, float] = {}
  for ev in prof.key_averages():
    if not ev.key.startswith("aten::"):
      continue
    op = ev.key[len("aten::"):]
    cat = category(op, op)
    totals[cat] = totals.get(cat, 0.0) + ev.self_cpu_time_total / 1e3 / steps
  return totals


def main(argv):
  del argv
  benchmarking.check_load()
  cfg, ex = model_config(), execution()
  tokens = _ROWS.value * _ROW_LEN.value
  step, compile_s, fn, held, batch = jax_runner(cfg)
  runners = {"hrm_jax": step}
  on_cpu = jax.default_backend() == "cpu"
  if on_cpu and _TORCH.value:
    runners["transformers (PyTorch)"] = torch_runner(cfg)
  if _FLOOR.value:
    floor_fn, floor_flops, dots = floor_runner(fn, held["state"], batch)
    runners["hrm_jax's matmuls alone (floor)"] = floor_fn
  seconds = benchmarking.time_alternating(runners, _STEPS.value, warmup=False)  # all warm
  flops = flops_lib.train_flops_per_token(cfg, _ROW_LEN.value, _BP.value)
  peak = metrics_lib.peak_flops_per_device() * jax.device_count()
  print(f"backend={jax.default_backend()} devices={jax.device_count()} hidden={cfg.hidden_size} "
        f"layers/stack={cfg.layers_per_stack} H{cfg.H_cycles} L{cfg.L_cycles} "
        f"batch={_ROWS.value}x{_ROW_LEN.value} dtype={ex.dtype} bp_steps={_BP.value} "
        f"attention={ex.attention_impl} remat={ex.remat_policy}/{ex.remat_scope} "
        f"unroll_scans={ex.unrolled(cfg.hidden_size)} (compiled in {compile_s:.1f} s); "
        f"median of {_STEPS.value} alternating steps each")
  print(f"peak: {peak / 1e9:.1f} GFLOP/s ({'measured f32 matmul' if on_cpu else 'vendor bf16'}); "
        f"model FLOPs/token (truncated backward counted): {flops / 1e6:.1f} M")
  reference = seconds.get("transformers (PyTorch)", seconds["hrm_jax"])
  print("| implementation | step ms | tokens/s | MFU | speed-up over transformers |\n"
        "|---|---|---|---|---|")
  for name, t in seconds.items():
    print(f"| {name} | {1e3 * t:.0f} | {tokens / t:.0f} | {100 * flops * tokens / t / peak:.1f}% "
          f"| {reference / t:.2f}x |")
  if _FLOOR.value:
    print(f"the floor runs {sum(d.count for d in dots)} dot_generals ({len(dots)} shapes), "
          f"{floor_flops / 1e9:.1f} GFLOP: {floor_flops / seconds[list(runners)[-1]] / 1e9:.0f} "
          "GFLOP/s; 1.2x transformers would need a step of "
          f"{1e3 * reference / 1.2:.0f} ms")
  if _PROFILE.value:
    profiles = {"hrm_jax": xla_profile(fn.lower(held["state"], batch).compile(), step, 3)}
    if "transformers (PyTorch)" in runners:
      profiles["transformers"] = torch_profile(runners["transformers (PyTorch)"], 3)
    cats = sorted({c for p in profiles.values() for c in p},
                  key=lambda c: -profiles["hrm_jax"].get(c, 0.0))
    print("| ms per step (op self time, summed over threads) | " + " | ".join(profiles)
          + " |\n|---|" + "---|" * len(profiles))
    for c in cats + ["total"]:
      vals = [sum(p.values()) if c == "total" else p.get(c, 0.0) for p in profiles.values()]
      print(f"| {c} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
  bps = {bp: None if bp == "full" else int(bp) for bp in _MEMORY_BP.value}
  mem_rows = {"train step": [step_temporaries(cfg, held["state"], batch, b) for b in bps.values()],
              "gradient alone": [grad_temporaries(cfg, batch, b) for b in bps.values()]}
  print("| compiled temporaries MiB at bp_steps | " + " | ".join(bps) + " |\n|---|"
        + "---|" * len(bps))
  for name, temps in mem_rows.items():
    if None not in temps:
      print(f"| {name} | " + " | ".join(f"{t / 2**20:,.0f}" for t in temps) + " |")
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      print(f"device peak memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")


if __name__ == "__main__":
  cli.run(main)
