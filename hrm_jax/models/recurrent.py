"""The setup every recurrent core shares: its stacks by name and the fixed initial L state."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.layers import Stack, trunc_normal


class Recurrent(nn.Module):
  """Base of hrm, trm, rins and ut: one `Stack` per name in STACKS (H with H_override
  applied, `ModelConfig.stack_config`) and `z_L_init` [D]: std 1, never trained, kept in
  the 'buffers' collection."""

  config: ModelConfig
  execution: Execution
  STACKS: ClassVar[tuple[str, ...]] = ("H", "L")

  def setup(self):
    for name in self.STACKS:
      setattr(self, name, Stack(self.config.stack_config(name), self.execution))
    self.z_L_init = self.variable(
        "buffers", "z_L_init",
        lambda: trunc_normal(1.0)(self.make_rng("params"), (self.config.hidden_size,),
                                  jnp.float32))

  def z_L0(self, x_BxSxD: jax.Array) -> jax.Array:
    """The initial L state, broadcast to x's shape and dtype."""
    return jnp.broadcast_to(self.z_L_init.value.astype(x_BxSxD.dtype), x_BxSxD.shape)
