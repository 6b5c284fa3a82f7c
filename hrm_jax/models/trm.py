"""TRM baseline: the H/L recursion with ONE stack playing both roles.

    z_L = S(z_L + z_H)  (L_cycles times), then  z_H = S(z_H + z_L),  H_cycles times.

Gradient windows are fixed by the config (H_bp_steps trailing H passes, L_bp_steps
trailing L passes); `trm_match_recurrence` is this model with half the layers and H2 L3.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack
from hrm_jax.models.hrm import hl_recursion, z_L_init_variable


class TRM(nn.Module):
  config: ModelConfig

  def setup(self):
    self.L = Stack(self.config)
    self.z_L_init = z_L_init_variable(self, self.config.hidden_size)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    grads = None
    if bp_steps is not None:
      grads = truncation.hl_grad_flags(c.H_cycles, c.L_cycles, c.H_bp_steps, c.L_bp_steps)
    stack = lambda m: m.L
    return hl_recursion(self, stack, stack, x_BxSxD, self.z_L_init.value, seq, c.H_cycles,
                        c.L_cycles, grads)
