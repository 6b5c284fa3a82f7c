"""Model FLOPs per token: forward, and a training step with the truncated backward counted.

Convention (as MaxText/PaLM MFU): matmul FLOPs only, 2 per multiply-add; attention scores
and values over half the row on average (causal); the backward of a pass costs twice its
forward and is only paid by passes that carry gradient. Embedding lookups are free. Each
arch declares its passes per stack and which carry gradient (`ArchSpec.passes`).
"""

from __future__ import annotations

from typing import Optional

from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.models.registry import spec_of


def layer_flops(config: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs of one block for one token in a row of `seq_len`."""
  c = config
  d, m, hk = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
  matmuls = 2 * (d * 4 * hk + hk * d + d * 2 * m + m * d)
  attention = 2 * 2 * hk * seq_len / 2
  return float(matmuls + attention)


def stack_weight_reads(config: ModelConfig, bp_steps: Optional[int]) -> tuple[float, float]:
  """(layer weights applied by all passes, by the passes with gradient) in one forward: each
  pass applies every layer of its stack once (what a step reads from memory per token row)."""
  def per_layer(s: ModelConfig) -> float:
    d, m, hk = s.hidden_size, s.intermediate_size, s.num_heads * s.head_dim
    return float(d * 4 * hk + hk * d + d * 2 * m + m * d)
  return _per_stack(config, bp_steps, per_layer)


def stack_passes(config: ModelConfig) -> dict[str, int]:
  """How many times the core applies each of its stacks (by module name) per forward."""
  return {name: n for name, (n, _) in spec_of(config).passes(config, None).items()}


def pass_counts(config: ModelConfig, bp_steps: Optional[int]) -> tuple[int, int]:
  """(stack passes per token, passes that carry gradient at `bp_steps`)."""
  counts = spec_of(config).passes(config, bp_steps).values()
  return sum(n for n, _ in counts), sum(g for _, g in counts)


def _per_stack(config: ModelConfig, bp_steps: Optional[int], per_layer) -> tuple[float, float]:
  """(sum over passes, sum over gradient passes) of per_layer(stack config) x its layers."""
  total = grad = 0.0
  for name, (n, n_grad) in spec_of(config).passes(config, bp_steps).items():
    stack = config.stack_config(name)
    cost = stack.layers_per_stack * per_layer(stack)
    total, grad = total + n * cost, grad + n_grad * cost
  return total, grad


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
  c = config
  stacks, _ = _per_stack(c, None, lambda s: layer_flops(s, seq_len))
  return stacks + 2 * c.hidden_size * c.vocab_size


def train_flops_per_token(config: ModelConfig, seq_len: int, bp_steps: Optional[int]) -> float:
  """Forward of every pass + backward (2x) of the passes with gradient and of the head."""
  c = config
  stacks, grad_stacks = _per_stack(c, bp_steps, lambda s: layer_flops(s, seq_len))
  head = 2 * c.hidden_size * c.vocab_size
  return stacks + 2 * grad_stacks + 3 * head


def recompute_flops_per_token(config: ModelConfig, execution: Execution, seq_len: int,
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
  c, ex = config, execution
  if ex.remat_policy == "none":
    return 0.0
  d, hk = c.hidden_size, c.num_heads * c.head_dim
  attention = 2 * 2 * hk * seq_len / 2
  per_layer = lambda s: {"full": layer_flops(s, seq_len), "proj": 2 * hk * d + attention,
                         "dots": attention}[ex.remat_policy]
  scopes = 2 if ex.remat_scope == "pass" else 1
  _, grad_stacks = _per_stack(c, bp_steps, per_layer)
  return float(scopes * grad_stacks)
