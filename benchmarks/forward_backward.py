"""Forward+backward time of LanguageModel per bp_steps: truncation must save backward work.

    python benchmarks/forward_backward.py --hidden=256 --layers=4 --batch=8 --seq=256

Prints one row per bp_steps (None = untruncated) with step time, tokens/s and the ratio to
the untruncated step, all measured in one run.
"""

from __future__ import annotations

import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import hrm_jax
from hrm_jax import cli

_HIDDEN = flags.DEFINE_integer("hidden", 256, "hidden size")
_HEADS = flags.DEFINE_integer("heads", 4, "attention heads")
_LAYERS = flags.DEFINE_integer("layers", 4, "n_layers (total; hrm halves it)")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per batch")
_SEQ = flags.DEFINE_integer("seq", 256, "row length")
_VOCAB = flags.DEFINE_integer("vocab", 512, "vocab size")
_ARCH = flags.DEFINE_string("arch", "hrm", "architecture")
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype")
_REMAT = flags.DEFINE_string("remat", "none", "remat policy")
_UNROLL = flags.DEFINE_bool("unroll", False, "unroll_scans")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed steps per variant")


def main(_):
  cfg = hrm_jax.model_config("B", _ARCH.value, hidden_size=_HIDDEN.value, num_heads=_HEADS.value,
                             n_layers=_LAYERS.value, vocab_size=_VOCAB.value)
  ex = hrm_jax.Execution(dtype=_DTYPE.value, remat_policy=_REMAT.value,
                         unroll_scans=_UNROLL.value)
  model = hrm_jax.LanguageModel(cfg, ex)
  b, s = _BATCH.value, _SEQ.value
  rng = np.random.default_rng(0)
  half = s // 2
  batch = {
      "inputs": jnp.asarray(rng.integers(1, cfg.vocab_size, (b, s)), jnp.int32),
      "positions": jnp.tile(jnp.arange(s, dtype=jnp.int32), (b, 1)),
      "segment_ids": jnp.ones((b, s), jnp.int32),
      "prefix_mask": jnp.tile(jnp.arange(s) < half, (b, 1)),
  }
  labels = jnp.where(jnp.arange(s) >= half, batch["inputs"], hrm_jax.IGNORE_LABEL)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)

  def grad_fn(params, bp):
    def loss(p):
      logits = model.apply({**variables, "params": p}, batch, bp_steps=bp)
      return hrm_jax.loss_and_metrics(logits, labels, batch["segment_ids"])[0]
    return jax.value_and_grad(loss)(params)

  print(f"arch={cfg.arch} hidden={cfg.hidden_size} layers/stack={cfg.layers_per_stack} "
        f"H{cfg.H_cycles} L{cfg.L_cycles} batch={b}x{s} dtype={ex.dtype} "
        f"remat={ex.remat_policy} unroll={ex.unroll_scans} backend={jax.default_backend()}")
  print(f"{'bp_steps':>8} | {'step ms':>8} | {'tokens/s':>9} | {'vs full':>7}")
  rows = []
  for bp in (None, 5, 4, 3, 2):
    fn = jax.jit(grad_fn, static_argnums=1)
    jax.block_until_ready(fn(variables["params"], bp))
    times = []
    for _ in range(_REPEATS.value):
      t = time.perf_counter()
      jax.block_until_ready(fn(variables["params"], bp))
      times.append(time.perf_counter() - t)
    rows.append((bp, float(np.median(times))))
  full = rows[0][1]
  for bp, t in rows:
    print(f"{str(bp):>8} | {t * 1e3:8.1f} | {b * s / t:9.0f} | {full / t:6.2f}x")


if __name__ == "__main__":
  cli.run(main)
