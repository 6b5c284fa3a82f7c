"""Transformer baseline: one stack of n_layers applied once (no recursion, no truncation)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack
from hrm_jax.models import spec


class Transformer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    del bp_steps  # a single pass always carries gradient
    return Stack(self.config, name="stack")(x_BxSxD, seq)


SPEC = spec.ArchSpec(family="transformer", core=Transformer, stacks=("stack",),
                     defaults=dict(half_layers=False), passes=lambda c, bp: {"stack": (1, 1)})
