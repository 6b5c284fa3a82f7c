"""Print parameters and FLOPs per token of every preset size and architecture.

    python experiments/model_summary.py --sizes=XL,L --archs=hrm,transformer --seq_len=4096

Parameters are counted from abstract shapes (nothing is allocated). FLOPs follow
`hrm_jax.flops` (training at bp_steps=bp_max for hrm, the fixed windows for baselines).
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp

import hrm_jax
from hrm_jax import cli, flops
from hrm_jax.train import bp_schedule

_SIZES = flags.DEFINE_list("sizes", list(hrm_jax.SIZES), "sizes to list")
_ARCHS = flags.DEFINE_list("archs", list(hrm_jax.ARCHS), "architectures to list")
_SEQ = flags.DEFINE_integer("seq_len", 4096, "row length used for attention FLOPs",
                            lower_bound=1)
_VOCAB = flags.DEFINE_integer("vocab_size", 65536, "vocabulary size", lower_bound=1)


def abstract_params(config: hrm_jax.ModelConfig):
  spec = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  batch = {"inputs": spec, "positions": spec, "segment_ids": spec,
           "prefix_mask": jax.ShapeDtypeStruct((1, 8), jnp.bool_)}
  return jax.eval_shape(hrm_jax.LanguageModel(config).init, jax.random.PRNGKey(0),
                        batch)["params"]


def main(argv):
  del argv
  for name in _SIZES.value:
    if name not in hrm_jax.SIZES:
      raise app.UsageError(f"--sizes: unknown size {name!r}; expected {list(hrm_jax.SIZES)}")
  for name in _ARCHS.value:
    if name not in hrm_jax.ARCHS:
      raise app.UsageError(f"--archs: unknown arch {name!r}; expected {list(hrm_jax.ARCHS)}")
  print("| size | arch | layers/stack | params | passes/token | fwd GFLOP/token | "
        "train GFLOP/token |")
  print("|---|---|---|---|---|---|---|")
  for size in _SIZES.value:
    for arch in _ARCHS.value:
      c = hrm_jax.model_config(size, arch, vocab_size=_VOCAB.value)
      bp = bp_schedule.bp_steps_at(1 << 30, 1, c)
      passes, _ = flops.pass_counts(c, bp)
      n = hrm_jax.count_params(abstract_params(c))
      print(f"| {size} | {arch} | {c.layers_per_stack} | {n:,} | {passes} | "
            f"{flops.forward_flops_per_token(c, _SEQ.value) / 1e9:.2f} | "
            f"{flops.train_flops_per_token(c, _SEQ.value, bp) / 1e9:.2f} |")


if __name__ == "__main__":
  cli.run(main)
