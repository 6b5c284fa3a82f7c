"""Transformer baseline: one stack of n_layers applied once (no recursion, no truncation)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo, Stack
from hrm_jax.execution import Execution
from hrm_jax.models import passes, spec


class Transformer(nn.Module):
  config: ModelConfig
  execution: Execution

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, bp_steps: Optional[int] = None,
               cache: passes.Cache = None) -> tuple[jax.Array, passes.Cache]:
    del bp_steps  # a single pass always carries gradient
    stack = Stack(self.config, self.execution, name="stack")
    return passes.one_pass(stack, x_BxSxD, None, seq, cache=cache)


SPEC = spec.ArchSpec(family="transformer", core=Transformer, stacks=("stack",),
                     defaults=dict(half_layers=False), passes=lambda c, bp: {"stack": (1, 1)})
