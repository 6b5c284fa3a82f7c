"""RINS baseline: recurse the L stack on the input, then read out once with H.

    z = z_L_init;  repeat L_cycles:  z = L(z + x);   return H(z)   (no injection into H)

Only the last `L_bp_cycles` L passes carry gradient when truncation is on.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack
from hrm_jax.models import passes
from hrm_jax.models.hrm import z_L_init_variable


class RINS(nn.Module):
  config: ModelConfig

  def setup(self):
    self.H = Stack(self.config.stack_config("H"))
    self.L = Stack(self.config)
    self.z_L_init = z_L_init_variable(self, self.config.hidden_size)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    grads = None if bp_steps is None else truncation.trailing(c.L_cycles, c.L_bp_cycles)
    z = jnp.broadcast_to(self.z_L_init.value.astype(x_BxSxD.dtype), x_BxSxD.shape)
    z = passes.repeat(self.L, z, x_BxSxD, seq, c.L_cycles, grads)
    return self.H(z, seq)
