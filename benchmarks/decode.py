"""Greedy decode tokens/s: hrm_jax.generate vs transformers' generate, same model and prompts.

    python benchmarks/decode.py [--hidden_size=256 --layers_per_stack=2 --batch=4 --new_tokens=64]
    python benchmarks/decode.py --continuous --batch=8 [--prompts=48]
    python benchmarks/decode.py --floor [--new_tokens=32]
    python benchmarks/decode.py --speculative [--checkpoint=runs/demo --new_tokens=32]

--continuous compares the engine's continuous batching (a finished row takes the next
prompt) with static batches (each group of --batch prompts generated to its longest budget,
through the same `hrm_jax.generate`) on prompts with long-tailed budgets: 80% in 4-32 new
tokens, 20% in 96-128. It prints items/s of both, their ratio and whether every answer is
the same: the fastest of 3 interleaved runs of each, after one warm-up run (compilation).

--floor: greedy decode tokens/s of `hrm_jax.generate` at batch 1, 8 and 32 next to its
bare step (`decode.step` with argmax, no sampling or row bookkeeping, in one compiled loop)
and two floors, each in one compiled loop: the weight-matmul floor (every layer application's
gqkv, o, gate_up and down projections and the head, chained so none is skipped) and the
step-matmul floor (those plus attention's two dots per layer application over the engine's
cache: the cache reads no decode step can skip), and the time to read every cache slot once
(float32 and bfloat16; a fused sum, no dot). engine / bare shows what sampling and
bookkeeping cost, bare / step floor what the mask, softmax, norms, RoPE, cache writes and
XLA's per-op dispatch cost.

--speculative: self-speculative decoding (`draft_cycles`, `draft_len`) against plain greedy
decoding at batch 1 and 8, on --checkpoint (the trained demo: held-out demo prompts) and on
random weights of the same shape: tokens/s, speedup, acceptance rate, the draft's
teacher-forced agreement with the plain output and the acceptance it predicts, tokens per
verification, and whether every answer is the same; then, at batch 1 and 8, the costs that
bound the speedup (ms of one decode step, one (k+1)-token verification, one draft step;
the weight-matmul floor of each at B, B*(k+1) and B rows; the verification's cache writes
alone; each in one compiled loop, fastest of 3) and the speedup predicted from the
measured tokens per verification by the calls and by their floors.

A random hrm_jax model is exported with hrm_jax.hf.save and loaded by
`transformers.HrmTextForCausalLM`; both decode the same left-padded PrefixLM prompts
greedily (no eos). One timed run each, after one warm-up run (compilation for hrm_jax).
ms per decode step is (time for new_tokens - time for 1 token) / (new_tokens - 1), i.e.
without the prefill; tokens/s include the prefill for both. The last line is the call's
floor: its matmuls alone (the prefill's dots in one compiled program, plus new_tokens - 1
decode steps at the step-matmul floor of --floor), which bounds the speed-up any engine
running the model once per token can reach over transformers. Wall times on a shared machine
are noisy: the CPU seconds of the process and the load average are printed beside them.
XLA flags are the user's (XLA_FLAGS); none is set here (single-threaded XLA,
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, measured no faster).
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from absl import flags

import hrm_jax
from hrm_jax import benchmarking, cli, decode, generation, model_loading, speculative
from hrm_jax.data import demo

EXECUTION = hrm_jax.Execution()  # float32, as every table here says

flags.DEFINE_integer("hidden_size", 256, "Hidden size.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("layers_per_stack", 2, "Layers in each of H and L.")
flags.DEFINE_integer("H_cycles", 2, "H cycles.")
flags.DEFINE_integer("L_cycles", 3, "L cycles.")
flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size.")
flags.DEFINE_integer("batch", 4, "Prompts decoded together.")
flags.DEFINE_integer("new_tokens", 64, "Tokens generated per prompt.")
flags.DEFINE_bool("continuous", False, "Continuous vs static batching (see above).")
flags.DEFINE_integer("prompts", 48, "Prompts of the --continuous comparison.")
flags.DEFINE_bool("floor", False, "Engine tokens/s vs the weight-matmul floor (see above).")
flags.DEFINE_bool("speculative", False, "Speculative vs plain greedy decoding (see above).")
flags.DEFINE_string("checkpoint", None, "--speculative: a trained checkpoint (the demo: "
                    "runs/demo); its config replaces the model flags.")
flags.DEFINE_list("draft_depths", ["1x1", "2x1"], "--speculative: draft depths HxL.")
flags.DEFINE_list("draft_lens", ["2", "4"], "--speculative: tokens drafted per verification.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads for transformers; 0 keeps "
                     "torch's default (one per core). On a loaded machine compare 1 with "
                     "XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1'.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  benchmarking.check_load()
  if f.torch_threads:
    torch.set_num_threads(f.torch_threads)
  config = hrm_jax.model_config(
      "B", "hrm", hidden_size=f.hidden_size, num_heads=f.num_heads,
      n_layers=2 * f.layers_per_stack, H_cycles=f.H_cycles, L_cycles=f.L_cycles,
      vocab_size=f.vocab_size)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, f.vocab_size, int(n)).tolist()
             for n in rng.integers(16, 48, f.batch)]
  dummy = {k: np.zeros((1, 8), np.int32) for k in ("inputs", "positions", "segment_ids")}
  dummy["prefix_mask"] = np.ones((1, 8), bool)
  variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(0), dummy)
  if f.continuous:
    continuous(config, variables, rng)
    return
  if f.floor:
    floor(config, variables, rng)
    return
  if f.speculative:
    speculative_table(config, variables, rng)
    return

  def timed(run) -> tuple[object, float, float]:
    """One warm-up run (compilation), then one timed run: output, wall s, process CPU s."""
    run()
    start, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - start, time.process_time() - cpu

  ours, jax_s, jax_cpu = timed(lambda: hrm_jax.generate(config, variables, prompts, f.new_tokens))
  _, jax_first_s, _ = timed(lambda: hrm_jax.generate(config, variables, prompts, 1))

  with tempfile.TemporaryDirectory() as tmp:
    hrm_jax.hf.save(tmp, config, variables)
    model = transformers.HrmTextForCausalLM.from_pretrained(tmp).eval()
  p = max(map(len, prompts))
  ids = torch.tensor([[0] * (p - len(x)) + x for x in prompts])
  real = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts])
  kw = dict(input_ids=ids, attention_mask=real, token_type_ids=real, do_sample=False,
            pad_token_id=0)

  def hf_generate(n: int):
    with torch.no_grad():
      return model.generate(**kw, max_new_tokens=n, min_new_tokens=n)

  theirs, torch_s, torch_cpu = timed(lambda: hf_generate(f.new_tokens))
  _, torch_first_s, _ = timed(lambda: hf_generate(1))

  prefill_floor_ms, step_floor_ms = call_floor_ms(config, variables, prompts, f.new_tokens)
  floor_ms = prefill_floor_ms + (f.new_tokens - 1) * step_floor_ms
  n = f.batch * f.new_tokens
  per_step = lambda total, first: (total - first) / max(f.new_tokens - 1, 1) * 1e3
  agree = np.mean([a == b for a, b in zip(np.array(ours).ravel(), theirs[:, p:].numpy().ravel())])
  print(f"model: hidden {f.hidden_size}, {f.num_heads} heads, {f.layers_per_stack} layers/stack, "
        f"H{f.H_cycles} L{f.L_cycles} ({config.H_cycles * (config.L_cycles + 1) * config.layers_per_stack} "
        f"layer applications per token), vocab {f.vocab_size}, float32; batch {f.batch}, "
        f"{f.new_tokens} new tokens, prompt lengths {[len(x) for x in prompts]}")
  print(f"threads: torch {torch.get_num_threads()}, XLA CPU intra-op pool {os.cpu_count()} "
        f"(one per core); XLA_FLAGS={os.environ.get('XLA_FLAGS') or '(default)'}; "
        "transformers runs float32 eager")
  print(f"| {'':22} | {'tokens/s':>9} | {'total s':>8} | {'CPU s':>6} | {'ms per decode step':>18} "
        f"| {'prefill + 1 token ms':>20} |")
  print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 8}|{'-' * 20}|{'-' * 22}|")
  for name, total, cpu, first in (("hrm_jax.generate", jax_s, jax_cpu, jax_first_s),
                                  ("transformers generate", torch_s, torch_cpu, torch_first_s)):
    print(f"| {name:22} | {n / total:9.1f} | {total:8.3f} | {cpu:6.2f} | "
          f"{per_step(total, first):18.2f} | {first * 1e3:20.1f} |")
  print(f"ratio (tokens/s): {torch_s / jax_s:.2f}x; per decode step: "
        f"{per_step(torch_s, torch_first_s) / per_step(jax_s, jax_first_s):.2f}x; greedy tokens "
        f"agreeing: {agree:.1%}; load average (1 min) {os.getloadavg()[0]:.2f}")
  print(f"the call's matmuls alone: {floor_ms:.1f} ms (the prefill's {prefill_floor_ms:.1f} ms, "
        f"then {f.new_tokens - 1} decode steps at the step-matmul floor, {step_floor_ms:.2f} "
        "ms), so no engine on XLA:CPU's matmuls beats transformers by more than "
        f"{torch_s * 1e3 / floor_ms:.2f}x here; hrm_jax.generate is {jax_s * 1e3 / floor_ms:.2f}x "
        "that floor")


def call_floor_ms(config: hrm_jax.ModelConfig, variables: dict, prompts: list[list[int]],
                  new_tokens: int) -> tuple[float, float]:
  """ms of a `generate` call's matmuls alone, each in one compiled program: the prefill's
  dots (`benchmarking.dots_of` on `decode.prefill` at the engine's padded prompt shape) and
  one decode step's at the step-matmul floor (weights, and attention's dots over the
  engine's cache)."""
  p = generation.bucket(max(map(len, prompts)))
  length = p + generation.bucket(new_tokens)
  prompt_BxP = jnp.ones((len(prompts), p), jnp.int32)
  run, inputs = benchmarking.dots_program(benchmarking.dots_of(
      lambda v, x: _prefilled(config, v, x, length), variables, prompt_BxP))
  _, prefill_s = _timed(lambda: run(*inputs), repeats=3)
  step = matmul_floor_ms(config, decode.prepare(variables), len(prompts), repeats=3,
                         cache_len=length)
  return prefill_s * 1e3, step


def continuous(config: hrm_jax.ModelConfig, variables: dict, rng: np.random.Generator) -> None:
  """Items/s of continuous vs static batches of FLAGS.batch over long-tailed budgets."""
  f = flags.FLAGS
  n = f.prompts
  prompts = [rng.integers(1, f.vocab_size, int(k)).tolist() for k in rng.integers(16, 48, n)]
  long_tail = np.isin(np.arange(n), rng.permutation(n)[:round(0.2 * n)])  # exactly 20%
  budgets = np.where(long_tail, rng.integers(96, 129, n), rng.integers(4, 33, n)).tolist()

  def static():
    out = []
    for i in range(0, n, f.batch):  # every row of a batch waits for the batch's longest
      out += hrm_jax.generate(config, variables, prompts[i:i + f.batch], budgets[i:i + f.batch])
    return out

  def engine():
    return hrm_jax.generate(config, variables, prompts, budgets, batch_size=f.batch)

  arms = (("static batches", static), ("continuous batching", engine))
  outs = {name: run() for name, run in arms}  # compilation
  seconds = {name: float("inf") for name, _ in arms}
  for _ in range(3):  # interleaved, the fastest of each: the least disturbed by other jobs
    for name, run in arms:
      start = time.perf_counter()
      outs[name] = run()
      seconds[name] = min(seconds[name], time.perf_counter() - start)
  tokens = sum(budgets)
  print(f"model: hidden {f.hidden_size}, {f.layers_per_stack} layers/stack, H{f.H_cycles} "
        f"L{f.L_cycles}, vocab {f.vocab_size}, float32; {n} prompts of 16-47 tokens, batch "
        f"{f.batch}; budgets: {int(long_tail.sum())} in 96-128, the rest in 4-32 "
        f"({tokens} tokens, no eos)")
  print(f"| {'':20} | {'items/s':>8} | {'tokens/s':>9} | {'s':>7} |")
  print(f"|{'-' * 22}|{'-' * 10}|{'-' * 11}|{'-' * 9}|")
  for name, s in seconds.items():
    print(f"| {name:20} | {n / s:8.2f} | {tokens / s:9.1f} | {s:7.2f} |")
  print(f"continuous / static items/s: {seconds['static batches'] / seconds['continuous batching']:.2f}x; "
        f"same tokens: {outs['static batches'] == outs['continuous batching']}; "
        f"load average (1 min) {os.getloadavg()[0]:.2f}")


def _timed(run, repeats: int = 1) -> tuple[object, float]:
  """One warm-up run (compilation), then `repeats` timed runs: output, the fastest wall s
  (the least disturbed by other jobs on a shared machine)."""
  jax.block_until_ready(run())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return out, best


def _prefilled(config: hrm_jax.ModelConfig, variables: dict, prompt_BxP: np.ndarray,
               length: int):
  return decode.prefill(config, EXECUTION, variables, jnp.asarray(prompt_BxP),
                        jnp.zeros(len(prompt_BxP), jnp.int32), length)


def tokens_ms(config: hrm_jax.ModelConfig, variables: dict, prompt_BxP: np.ndarray, s: int,
              steps: int = 24, repeats: int = 1) -> float:
  """ms per call of `decode.decode_tokens` with s tokens per row (a decode step at s = 1,
  a verification of s - 1 drafts), `steps` calls in one compiled loop, argmax between;
  the fastest of `repeats` timed loops."""
  b, p = prompt_BxP.shape
  logits_BxV, cache = _prefilled(config, variables, prompt_BxP, p + steps * s)

  @jax.jit
  def loop(cache, token_B):
    def body(i, carry):
      cache, token_B = carry
      logits_BxSxV, cache = decode.decode_tokens(
          config, EXECUTION, variables, cache, jnp.repeat(token_B[:, None], s, 1),
          jnp.zeros(b, jnp.int32), jnp.full(b, p, jnp.int32) + i * s)
      return cache, jnp.argmax(logits_BxSxV[:, -1], -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (cache, token_B))[1]

  first_B = jnp.argmax(logits_BxV, -1).astype(jnp.int32)
  _, seconds = _timed(lambda: loop(cache, first_B), repeats)
  return seconds / steps * 1e3


def matmul_floor_ms(config: hrm_jax.ModelConfig, variables: dict, rows: int,
                    steps: int = 64, repeats: int = 1, cache_len: int = 0) -> float:
  """ms per call of a decode call's matmuls alone, in one compiled loop: each layer
  application's gqkv, o, gate_up and down projections at [rows, D], then the head. rows =
  B for a decode step, B * (k + 1) for a verification of k drafts. With `cache_len` T, each
  layer application also runs attention's two dots (scores, then the weighted values; no
  mask or softmax) over its own cache slot of T positions in the engine's layouts (keys
  [B*H, K, T], values [B*H, T, K]): the reads of the cache that any decode step makes."""
  core = variables["params"]["core"]
  d, h, k = config.hidden_size, config.num_heads, config.head_dim
  kernels = lambda stack: [
      tuple(jnp.asarray(layer[m][n]["kernel"]).reshape(
          (d, -1) if n in ("gqkv_proj", "gate_up_proj") else (-1, d))
          for m, n in (("attn", "gqkv_proj"), ("attn", "o_proj"), ("mlp", "gate_up_proj"),
                       ("mlp", "down_proj")))
      for _, layer in sorted(core[stack].items())]
  plan = [kernels("L")] * config.L_cycles + [kernels("H")]
  plan = [layer for stack in plan * config.H_cycles for layer in stack]
  head_DxV = jnp.asarray(variables["params"]["lm_head"]["kernel"])
  slots = len(plan) if cache_len else 0
  keys = [jnp.full((rows * h, k, cache_len), 1e-3) for _ in range(slots)]
  values = [jnp.full((rows * h, cache_len, k), 1e-3) for _ in range(slots)]

  @jax.jit
  def loop(x_BxD, keys, values):
    def body(_, x_BxD):
      for i, (gqkv, o, gate_up, down) in enumerate(plan):
        a_BxD = (x_BxD @ gqkv)[:, :o.shape[0]]
        if cache_len:
          q_Nx1xK = a_BxD.reshape(rows * h, 1, k)
          scores_Nx1xT = jnp.einsum("nsk,nkt->nst", q_Nx1xK, keys[i])
          a_BxD = jnp.einsum("nst,ntk->nsk", scores_Nx1xT, values[i]).reshape(rows, d)
        x_BxD = x_BxD + a_BxD @ o
        x_BxD = x_BxD + (x_BxD @ gate_up)[:, :down.shape[0]] @ down
      return x_BxD + 1e-9 * jnp.sum(x_BxD @ head_DxV)
    return jax.lax.fori_loop(0, steps, body, x_BxD)

  x = jnp.ones((rows, d), jnp.float32) * 1e-3
  _, seconds = _timed(lambda: loop(x, keys, values), repeats)
  return seconds / steps * 1e3


def cache_read_ms(config: hrm_jax.ModelConfig, batch: int, length: int, dtype: str,
                  steps: int = 64, repeats: int = 1) -> float:
  """ms per step of reading every cache slot of a decode step once (a sum over each slot's
  keys and values, in one compiled loop): the memory traffic no decode step can avoid."""
  cache = decode.init_cache(config, EXECUTION.replace(kv_cache_dtype=dtype), batch, length)

  @jax.jit
  def loop(cache):
    def body(_, acc):  # + acc: each trip depends on the last, so XLA cannot hoist the reads
      return acc + sum(jnp.sum(x.astype(jnp.float32) + acc)
                       for x in jax.tree.leaves(cache)) * 1e-9
    return jax.lax.fori_loop(0, steps, body, jnp.float32(0))

  _, seconds = _timed(lambda: loop(cache), repeats)
  return seconds / steps * 1e3


def step_ms(config: hrm_jax.ModelConfig, variables: dict, batch: int, length: int,
            steps: int = 32, repeats: int = 1) -> float:
  """ms per `decode.step` (the engine's decode step: one position of a ring cache of
  `length` positions, written at a common position by every row), `steps` in one compiled
  loop with argmax between: the engine's step without sampling or row bookkeeping."""
  state = decode.init(config, EXECUTION, batch, length)

  @jax.jit
  def loop(state, token_B):
    def body(_, carry):
      logits_BxV, state = decode.step(config, EXECUTION, variables, *carry)
      return state, jnp.argmax(logits_BxV, -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (state, token_B))[1]

  _, seconds = _timed(lambda: loop(state, jnp.ones(batch, jnp.int32)), repeats)
  return seconds / steps * 1e3


def cache_write_ms(config: hrm_jax.ModelConfig, batch: int, s: int, length: int,
                   steps: int = 64, repeats: int = 1) -> tuple[float, float]:
  """ms per call of a call's cache writes alone (s new positions per row into every
  (pass, layer) slot's keys [B, H, K, T] and values [B, H, T, K]), in one compiled loop: the
  per-row scatter `layers` uses when rows sit at different positions, and one
  dynamic_update_slice at a common offset (what a plain decode step does)."""
  h, k = config.num_heads, config.head_dim
  slots = config.H_cycles * (config.L_cycles + 1) * config.layers_per_stack
  zeros = lambda *shape: [jnp.zeros(shape, EXECUTION.dtype) for _ in range(slots)]
  keys, values = zeros(batch, h, k, length), zeros(batch, h, length, k)
  new_BxSxHxK = jnp.ones((batch, s, h, k), EXECUTION.dtype)
  rows_Bx1 = jnp.arange(batch)[:, None]

  def write(scatter: bool):
    @jax.jit
    def loop(keys, values):
      def body(i, carry):
        keys, values = carry
        at = (i * s) % (length - s)
        if scatter:
          index_BxS = at + rows_Bx1 * 0 + jnp.arange(s)[None]
          keys = [x.at[rows_Bx1, :, :, index_BxS].set(new_BxSxHxK + i, mode="drop")
                  for x in keys]
          values = [x.at[rows_Bx1, :, index_BxS, :].set(new_BxSxHxK + i, mode="drop")
                    for x in values]
        else:
          keys = [jax.lax.dynamic_update_slice(
              x, (new_BxSxHxK + i).transpose(0, 2, 3, 1), (0, 0, 0, at)) for x in keys]
          values = [jax.lax.dynamic_update_slice(
              x, (new_BxSxHxK + i).transpose(0, 2, 1, 3), (0, 0, at, 0)) for x in values]
        return keys, values
      return jax.lax.fori_loop(0, steps, body, (keys, values))
    _, seconds = _timed(lambda: loop(keys, values), repeats)
    return seconds / steps * 1e3

  return write(True), write(False)


def floor(config: hrm_jax.ModelConfig, variables: dict, rng: np.random.Generator) -> None:
  """Engine tokens/s at batch 1, 8, 32 against its bare step and two floors: the weight
  matmuls alone, and all the step's matmuls (weights and attention over the engine's cache)."""
  f = flags.FLAGS
  dv = decode.prepare(variables)
  length = generation.bucket(32) + generation.bucket(f.new_tokens)  # the engine's ring
  print(f"model: hidden {f.hidden_size}, {f.layers_per_stack} layers/stack, H{f.H_cycles} "
        f"L{f.L_cycles}, vocab {f.vocab_size}, float32; prompts of 32 tokens, "
        f"{f.new_tokens} new tokens (greedy, no eos), cache of {length} positions")
  print("| batch | engine tokens/s | engine ms/step | bare step ms | weight-matmul floor ms | "
        "step-matmul floor ms | cache read ms (f32 / bf16) | engine / weight floor | "
        "engine / step floor | bare / step floor |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for batch in (1, 8, 32):
    prompts = [rng.integers(1, f.vocab_size, 32).tolist() for _ in range(batch)]
    runs = {"total": lambda: _timed(lambda: hrm_jax.generate(config, variables, prompts,
                                                               f.new_tokens))[1] * 1e3,
            "first": lambda: _timed(lambda: hrm_jax.generate(config, variables, prompts,
                                                               1))[1] * 1e3,
            "bare": lambda: step_ms(config, dv, batch, length),
            "weights": lambda: matmul_floor_ms(config, dv, batch),
            "matmuls": lambda: matmul_floor_ms(config, dv, batch, cache_len=length),
            "read": lambda: cache_read_ms(config, batch, length, "float32"),
            "read16": lambda: cache_read_ms(config, batch, length, "bfloat16")}
    ms = {name: float("inf") for name in runs}
    for _ in range(3):  # interleaved rounds, the fastest of each: noise on a shared machine
      for name, run in runs.items():  # moves every figure by up to 30% between runs
        ms[name] = min(ms[name], run())
    engine = (ms["total"] - ms["first"]) / (f.new_tokens - 1)
    print(f"| {batch} | {batch * f.new_tokens / ms['total'] * 1e3:.1f} | {engine:.2f} | "
          f"{ms['bare']:.2f} | {ms['weights']:.2f} | {ms['matmuls']:.2f} | "
          f"{ms['read']:.2f} / {ms['read16']:.2f} | {engine / ms['weights']:.2f}x | "
          f"{engine / ms['matmuls']:.2f}x | "
          f"{ms['bare'] / ms['matmuls']:.2f}x |", flush=True)


def _demo_prompts(checkpoint: str, n: int) -> list[list[int]]:
  """The first held-out demo instructions of each task (the demo data's seed 0: its eval
  examples are drawn first and never occur in training)."""
  tok = model_loading.load_tokenizer(checkpoint)
  _, evals = demo.generate(seed=0, train_per_task=0, eval_per_task=-(-n // len(demo.TASKS)))
  return [tok.format_prompt(ex["instruction"], ex["condition"]) for ex in evals][:n]


def teacher_forced(config: hrm_jax.ModelConfig, draft: hrm_jax.ModelConfig, variables: dict,
                   prompts: list[list[int]], outs: list[list[int]], k: int
                   ) -> tuple[float, float]:
  """The draft's agreement with the full model's greedy tokens `outs` (teacher-forced, one
  cache-free forward: prompt as prefix, tokens causal) and the greedy acceptance rate it
  predicts at k: a round at token c accepts the run of agreements from c, at most k."""
  n = max(len(p) + len(o) for p, o in zip(prompts, outs))
  batch = {key: np.zeros((len(prompts), n), np.int32) for key in ("inputs", "positions",
                                                                 "segment_ids")}
  batch["prefix_mask"] = np.zeros((len(prompts), n), bool)
  for r, (p, o) in enumerate(zip(prompts, outs)):
    batch["inputs"][r, :len(p) + len(o)] = p + o
    batch["positions"][r, :len(p) + len(o)] = np.arange(len(p) + len(o))
    batch["segment_ids"][r, :len(p) + len(o)] = 1
    batch["prefix_mask"][r, :len(p)] = True
  argmax_BxS = np.argmax(hrm_jax.LanguageModel(draft).apply(variables, batch), -1)
  agree, accepted, drafted = [], 0, 0
  for r, (p, o) in enumerate(zip(prompts, outs)):
    hits = [argmax_BxS[r, len(p) + c - 1] == o[c] for c in range(1, len(o))]
    agree += hits
    c = 0  # hits[c]: the draft's token after o[:c + 1]
    while c < len(hits):
      a = 0
      while a < k and c + a < len(hits) and hits[c + a]:
        a += 1
      accepted, drafted, c = accepted + a, drafted + k, c + a + 1
  return float(np.mean(agree)), accepted / max(drafted, 1)


def speculative_table(config: hrm_jax.ModelConfig, variables: dict,
                      rng: np.random.Generator) -> None:
  """Speculative vs plain greedy tokens/s, on --checkpoint and on random weights."""
  f = flags.FLAGS
  depths = [tuple(int(c) for c in d.split("x")) for d in f.draft_depths]
  lens = [int(k) for k in f.draft_lens]
  models = []
  if f.checkpoint:
    config, _, trained = model_loading.load_model(f.checkpoint)  # measured in float32
    prompts = _demo_prompts(f.checkpoint, 8)
    models.append(("demo checkpoint", trained))
    dummy = {k: np.zeros((1, 8), np.int32) for k in ("inputs", "positions", "segment_ids")}
    dummy["prefix_mask"] = np.ones((1, 8), bool)
    variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(0), dummy)
  else:
    prompts = [rng.integers(1, f.vocab_size, int(n)).tolist() for n in rng.integers(16, 48, 8)]
  models.append(("random weights", variables))
  print(f"model: {config.arch}, hidden {config.hidden_size}, {config.layers_per_stack} "
        f"layers/stack, H{config.H_cycles} L{config.L_cycles}, vocab {config.vocab_size}; "
        f"{f.new_tokens} new tokens per prompt (greedy, no eos), prompt lengths "
        f"{[len(p) for p in prompts]}; load average (1 min) {os.getloadavg()[0]:.2f}")
  print("| weights | batch | draft | k | tokens/s | speedup | acceptance | teacher-forced "
        "agreement / predicted acceptance | tokens/verification | same output |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  tpv = {}
  for name, v in models:
    for batch in (1, 8):
      ps = prompts[:batch]
      plain, seconds = _timed(lambda: hrm_jax.generate(config, v, ps, f.new_tokens))
      n = batch * f.new_tokens
      print(f"| {name} | {batch} | - | - | {n / seconds:.1f} | 1.00x | | | | |", flush=True)
      for cycles in depths:
        for k in lens:
          stats = speculative.Stats()

          def run():
            stats.__init__()
            return hrm_jax.generate(config, v, ps, f.new_tokens, draft_cycles=cycles,
                                    draft_len=k, stats=stats)
          out, spec_s = _timed(run)
          tpv[name, batch, cycles, k] = stats.tokens_per_verification
          agree, predicted = teacher_forced(config, speculative.draft_config(config, cycles),
                                            v, ps, plain, k)
          print(f"| {name} | {batch} | H{cycles[0]} L{cycles[1]} | {k} | {n / spec_s:.1f} | "
                f"{seconds / spec_s:.2f}x | {stats.acceptance_rate:.1%} | {agree:.1%} / "
                f"{predicted:.1%} | {stats.tokens_per_verification:.2f} | {out == plain} |",
                flush=True)
  dv = decode.prepare(models[0][1])
  repeats = 3
  print(f"\ncosts ({models[0][0]}; ms per call, each in its own compiled loop, fastest of "
        f"{repeats}): a decode step, a (k+1)-token verification and a draft step, beside the "
        "weight-matmul floor of each (its matmuls alone at B, B*(k+1) and B rows) and the "
        "verification's cache writes alone (per-row scatter; one dynamic_update_slice at a "
        "common offset). Predicted speedup: tokens per verification * step / (verification "
        "+ k * draft step), from the measured calls and from their floors (the best the "
        "matmuls allow).")
  print("| batch | draft | k | step ms | verification ms | draft step ms | floor: step / "
        "verification / draft ms | verification / step (floor) | write: scatter / common ms "
        "| predicted speedup | floor-predicted speedup |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for batch in (1, 8):
    prompt = np.array([p + [p[-1]] * (max(map(len, prompts)) - len(p))
                       for p in prompts[:batch]], np.int32)
    step = tokens_ms(config, dv, prompt, 1, repeats=repeats)
    step_floor = matmul_floor_ms(config, dv, batch, repeats=repeats)
    for cycles in depths:
      draft = speculative.draft_config(config, cycles)
      draft_ms = tokens_ms(draft, dv, prompt, 1, repeats=repeats)
      draft_floor = matmul_floor_ms(draft, dv, batch, repeats=repeats)
      for k in lens:
        verify = tokens_ms(config, dv, prompt, k + 1, repeats=repeats)
        verify_floor = matmul_floor_ms(config, dv, batch * (k + 1), repeats=repeats)
        scatter, common = cache_write_ms(config, batch, k + 1,
                                         prompt.shape[1] + f.new_tokens + k, repeats=repeats)
        t = tpv[models[0][0], batch, cycles, k]
        print(f"| {batch} | H{cycles[0]} L{cycles[1]} | {k} | {step:.2f} | {verify:.2f} | "
              f"{draft_ms:.2f} | {step_floor:.2f} / {verify_floor:.2f} / {draft_floor:.2f} | "
              f"{verify / step:.2f} ({verify_floor / step_floor:.2f}) | {scatter:.3f} / "
              f"{common:.3f} | {t * step / (k * draft_ms + verify):.2f}x | "
              f"{t * step_floor / (k * draft_floor + verify_floor):.2f}x |", flush=True)
  print(f"load average (1 min) {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
  cli.run(main)
