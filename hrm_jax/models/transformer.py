"""Transformer baseline: one stack of n_layers applied once (no recursion, no truncation)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack


class Transformer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    del bp_steps  # a single pass always carries gradient
    return Stack(self.config, name="stack")(x_BxSxD, seq)
