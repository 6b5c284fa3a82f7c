"""How a model executes: dtypes, attention kernel, rematerialisation, scan unrolling.

None of it changes what the weights compute (up to float rounding), so it is kept apart from
`ModelConfig`: a checkpoint written under one `Execution` loads under any other, and the
Hugging Face export never sees it. `LanguageModel(config, execution)` takes it as a second,
frozen and hashable attribute (a static argument of every jitted function).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("dense", "chunked", "pallas_gpu", "pallas_tpu", "auto")
REMAT_POLICIES = ("none", "full", "proj", "dots")
REMAT_SCOPES = ("layer", "pass")
# Largest hidden size whose scans are unrolled on CPU by default: there a pass's matmuls are
# small enough that a scan's per-iteration slicing of the stacked weights costs more than
# the compile time unrolling adds (benchmarks/train_step.py --unroll).
CPU_UNROLL_MAX_HIDDEN = 512


@dataclasses.dataclass(frozen=True)
class Execution:
  """Numerics and implementation of one model."""

  dtype: str = "float32"  # compute (activations, matmul inputs, KV cache)
  # The KV cache's storage when decoding, None = `dtype`. "bfloat16" under a float32 model
  # halves the cache memory and the bytes each decode step reads (what bounds a step at long
  # contexts); keys and values are rounded to bfloat16 when written (8 significant bits),
  # attention itself runs in float32 (docs/inference.md#kv-cache-in-bfloat16).
  kv_cache_dtype: Optional[str] = None
  param_dtype: str = "float32"  # of freshly initialised parameters
  attention_impl: str = "dense"  # hrm_jax/attention.py
  attention_chunk: int = 512  # tile rows of the blockwise attention_impls
  # What a rematerialised unit keeps for the backward pass (none = no remat; full = only its
  # input; proj = also its projection outputs gqkv, gated attention and gate_up; dots =
  # every matmul output without batch dimensions), and the units: each "layer" of a stack, or
  # also each whole "pass" of a stack through the recursion (nested: fewer saved activations,
  # one more stack forward per gradient-carrying pass).
  remat_policy: str = "none"
  remat_scope: str = "layer"
  # Unroll the layer and recursion scans in the compiled program: faster for small models on
  # CPU (no per-iteration slicing of stacked weights), slower to compile for big ones.
  # None = by backend and size (`unrolled`).
  unroll_scans: Optional[bool] = None

  def __post_init__(self):
    def bad(field: str, why: str):
      raise ValueError(f"Execution.{field}={getattr(self, field)!r}: {why}")

    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in DTYPES:
        bad(f, f"expected one of {DTYPES}")
    if self.kv_cache_dtype not in (None, *DTYPES):
      bad("kv_cache_dtype", f"expected None or one of {DTYPES}")
    for f, allowed in (("attention_impl", ATTENTION_IMPLS), ("remat_policy", REMAT_POLICIES),
                       ("remat_scope", REMAT_SCOPES)):
      if getattr(self, f) not in allowed:
        bad(f, f"expected one of {allowed}")
    if not isinstance(self.attention_chunk, int) or self.attention_chunk <= 0:
      bad("attention_chunk", "must be a positive integer")

  def unrolled(self, hidden_size: int) -> bool:
    """unroll_scans, or when None: unrolled for small models compiled for CPU."""
    if self.unroll_scans is not None:
      return self.unroll_scans
    return jax.default_backend() == "cpu" and hidden_size <= CPU_UNROLL_MAX_HIDDEN

  @property
  def cache_dtype(self) -> str:
    """What the KV cache stores: kv_cache_dtype, else the compute dtype."""
    return self.kv_cache_dtype or self.dtype

  def replace(self, **changes: Any) -> "Execution":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(Execution))


def remat_policy(name: str):
  """Checkpoint policy for a rematerialised unit; None means no rematerialisation."""
  if name == "none":
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "proj":  # the checkpoint_name'd projection outputs of Attention and SwiGLU
    return jax.checkpoint_policies.save_only_these_names("gqkv_proj", "attn_out",
                                                         "gate_up_proj")
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"remat_policy={name!r} is unknown; expected one of {REMAT_POLICIES}")
