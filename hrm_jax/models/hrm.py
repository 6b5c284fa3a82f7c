"""HRM: the H/L recursion (REFERENCE section 1). The whole model logic is this file.

    z_H = embed(tokens);  z_L = z_L_init
    for i in range(H_cycles):
        for j in range(L_cycles):  z_L = L(z_L + z_H)
        z_H = H(z_H + z_L)
    return z_H

With `bp_steps`, only the last bp_steps passes carry gradient (`hrm_jax.truncation`). The
flags are static, so `hl_recursion` runs H cycles with the same flags as one scan
(`nn.scan`, shared parameters), and within a cycle each run of L passes with equal flags
as one scan: gradient-free passes keep nothing for the backward pass. Decoding with a KV
cache runs the same passes in the same order as Python loops (`hrm_jax.decode`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack, trunc_normal
from hrm_jax.models import passes


def z_L_init_variable(module: nn.Module, hidden: int) -> nn.Variable:
  """The fixed initial L state [D]: std 1, never trained, kept in the 'buffers' collection."""
  return module.variable(
      "buffers", "z_L_init",
      lambda: trunc_normal(1.0)(module.make_rng("params"), (hidden,), jnp.float32))


def hl_recursion(module: nn.Module, H, L, x_BxSxD: jax.Array, z_L_init_D: jax.Array,
                 seq: SeqInfo, H_cycles: int, L_cycles: int,
                 grads: Optional[tuple[np.ndarray, np.ndarray]]) -> jax.Array:
  """The H/L loop; grads = static (L flags [H_cycles, L_cycles], H flags [H_cycles]), or
  None for gradient through every pass.

  `module` owns both stacks (it is what the cycle scan lifts); H and L map it to the stack
  to use, so TRM can pass the same stack twice.
  """
  if grads is None:
    grads = (np.ones((H_cycles, L_cycles), bool), np.ones(H_cycles, bool))
  z_H = x_BxSxD
  z_L = jnp.broadcast_to(z_L_init_D.astype(x_BxSxD.dtype), x_BxSxD.shape)
  for cycles, L_grads, H_grad in truncation.hl_segments(*grads):  # H cycles alike, in order
    def cycle(mdl, carry, L_grads=L_grads, H_grad=H_grad):
      z_H, z_L = carry
      z_L = passes.repeat(L(mdl), z_L, z_H, seq, L_cycles, L_grads)  # z_L = L(z_L + z_H), L times
      z_H = passes.one_pass(H(mdl), z_H, z_L, seq, H_grad)            # z_H = H(z_H + z_L)
      return z_H, z_L

    z_H, z_L = passes.scan_passes(cycle, module, (z_H, z_L), cycles, seq)
  return z_H


class HRM(nn.Module):
  """Two stacks, H (slow) and L (fast), each of layers_per_stack layers."""

  config: ModelConfig

  def setup(self):
    self.H = Stack(self.config.stack_config("H"))
    self.L = Stack(self.config)
    self.z_L_init = z_L_init_variable(self, self.config.hidden_size)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    grads = None
    if bp_steps is not None:
      grads = truncation.hl_grad_flags(c.H_cycles, c.L_cycles,
                                       *truncation.hrm_bp_split(c.H_cycles, bp_steps))
    return hl_recursion(self, lambda m: m.H, lambda m: m.L, x_BxSxD, self.z_L_init.value, seq,
                        c.H_cycles, c.L_cycles, grads)
