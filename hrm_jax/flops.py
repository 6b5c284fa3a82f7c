"""Model FLOPs per token: forward, and a training step with the truncated backward counted.

Convention (as MaxText/PaLM MFU): matmul FLOPs only, 2 per multiply-add; attention scores
and values over half the row on average (causal); the backward of a pass costs twice its
forward and is only paid by passes that carry gradient. Embedding lookups are free.
"""

from __future__ import annotations

from typing import Optional

from hrm_jax import truncation
from hrm_jax.config import ModelConfig


def layer_flops(config: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs of one block for one token in a row of `seq_len`."""
  c = config
  d, m, hk = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
  matmuls = 2 * (d * 4 * hk + hk * d + d * 2 * m + m * d)
  attention = 2 * 2 * hk * seq_len / 2
  return float(matmuls + attention)


def stack_passes(config: ModelConfig) -> dict[str, int]:
  """How many times the core applies each of its stacks (by module name) per forward."""
  c = config
  if c.family == "transformer":
    return {"stack": 1}
  if c.family == "hrm":
    return {"H": c.H_cycles, "L": c.H_cycles * c.L_cycles}
  if c.family == "trm":
    return {"L": c.H_cycles * (c.L_cycles + 1)}
  if c.family == "rins":
    return {"L": c.L_cycles, "H": 1}
  return {"L": c.cycles}  # ut


def pass_counts(config: ModelConfig, bp_steps: Optional[int]) -> tuple[int, int]:
  """(stack passes per token, passes that carry gradient at `bp_steps`)."""
  c = config
  total = sum(stack_passes(c).values())
  if c.family == "transformer":
    return 1, 1
  if c.family in ("hrm", "trm"):
    if bp_steps is None:
      return total, total
    windows = (truncation.hrm_bp_split(c.H_cycles, bp_steps) if c.family == "hrm"
               else (c.H_bp_steps, c.L_bp_steps))
    L_grad, H_grad = truncation.hl_grad_flags(c.H_cycles, c.L_cycles, *windows)
    return total, int(L_grad.sum() + H_grad.sum())
  if c.family == "rins":
    return total, total if bp_steps is None else c.L_bp_cycles + 1
  return total, total if bp_steps is None else c.bp_cycles


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
  c = config
  passes, _ = pass_counts(c, None)
  return passes * c.layers_per_stack * layer_flops(c, seq_len) + 2 * c.hidden_size * c.vocab_size


def train_flops_per_token(config: ModelConfig, seq_len: int, bp_steps: Optional[int]) -> float:
  """Forward of every pass + backward (2x) of the passes with gradient and of the head."""
  c = config
  passes, grad_passes = pass_counts(c, bp_steps)
  stack = c.layers_per_stack * layer_flops(c, seq_len)
  head = 2 * c.hidden_size * c.vocab_size
  return (passes + 2 * grad_passes) * stack + 3 * head


def recompute_flops_per_token(config: ModelConfig, seq_len: int,
                              bp_steps: Optional[int]) -> float:
  """Forward FLOPs rematerialisation repeats in the backward: hardware FLOPs minus model FLOPs.

  Per gradient-carrying pass and layer, what `remat_policy` does not save is recomputed:
  `full` the whole block; `proj` (saves gqkv, gated attention, gate_up) o_proj and the
  attention matmuls; `dots` (saves every matmul without batch dims) the attention matmuls.
  `remat_scope="pass"` nests the same policy around each pass, recomputing as much again.
  Passes without gradient have no backward, so nothing of theirs is recomputed. The
  attention matmuls count as recomputed whole (an upper bound); the score recompute that
  blockwise attention kernels do in their own backward, under any policy, is not counted.
  """
  c = config
  if c.remat_policy == "none":
    return 0.0
  d, hk = c.hidden_size, c.num_heads * c.head_dim
  attention = 2 * 2 * hk * seq_len / 2
  per_layer = {"full": layer_flops(c, seq_len), "proj": 2 * hk * d + attention,
               "dots": attention}[c.remat_policy]
  scopes = 2 if c.remat_scope == "pass" else 1
  _, grad_passes = pass_counts(c, bp_steps)
  return float(scopes * grad_passes * c.layers_per_stack * per_layer)
