"""Universal (looped) Transformer baseline: one full stack applied `cycles` times.

    z = z_L_init;  repeat cycles:  z = S(z + x);   return z

Only the last `Options.bp_cycles` passes carry gradient when truncation is on.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import passes, spec
from hrm_jax.models.recurrent import Recurrent


@dataclasses.dataclass(frozen=True)
class Options:
  """ut's cycles of its single stack, and how many trailing ones carry gradient."""

  cycles: int = 4
  bp_cycles: int = 2

  def check(self, c: ModelConfig) -> None:
    del c
    if self.cycles < 1:
      raise spec.invalid_option(self, "cycles", "must be >= 1")
    if not 0 <= self.bp_cycles <= self.cycles:
      raise spec.invalid_option(self, "bp_cycles", f"must be in [0, cycles={self.cycles}]")


class UT(Recurrent):
  STACKS = ("L",)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, bp_steps: Optional[int] = None,
               cache: passes.Cache = None) -> tuple[jax.Array, passes.Cache]:
    o = self.config.options
    grads = None if bp_steps is None else truncation.trailing(o.cycles, o.bp_cycles)
    return passes.repeat(self.L, self.z_L0(x_BxSxD), x_BxSxD, seq, o.cycles, grads, cache)


SPEC = spec.ArchSpec(
    family="ut", core=UT, stacks=("L",), defaults=dict(half_layers=False, options=Options()),
    passes=lambda c, bp: {"L": (c.options.cycles,
                                c.options.cycles if bp is None else c.options.bp_cycles)},
    options=Options)
