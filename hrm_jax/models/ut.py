"""Universal (looped) Transformer baseline: one full stack applied `cycles` times.

    z = z_L_init;  repeat cycles:  z = S(z + x);   return z

Only the last `bp_cycles` passes carry gradient when truncation is on.
"""

from __future__ import annotations

from typing import Optional

import jax

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import passes, spec
from hrm_jax.models.recurrent import Recurrent


class UT(Recurrent):
  STACKS = ("L",)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    grads = None if bp_steps is None else truncation.trailing(c.cycles, c.bp_cycles)
    return passes.repeat(self.L, self.z_L0(x_BxSxD), x_BxSxD, seq, c.cycles, grads)


def validate(c: ModelConfig) -> None:
  if not 0 <= c.bp_cycles <= c.cycles:
    raise c.invalid("bp_cycles", f"must be in [0, cycles={c.cycles}]")


SPEC = spec.ArchSpec(
    family="ut", core=UT, stacks=("L",), defaults=dict(half_layers=False, cycles=4, bp_cycles=2),
    passes=lambda c, bp: {"L": (c.cycles, c.cycles if bp is None else c.bp_cycles)},
    validate=validate)
