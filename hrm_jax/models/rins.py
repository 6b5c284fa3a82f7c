"""RINS baseline: recurse the L stack on the input, then read out once with H.

    z = z_L_init;  repeat L_cycles:  z = L(z + x);   return H(z)   (no injection into H)

Only the last `L_bp_cycles` L passes carry gradient when truncation is on.
"""

from __future__ import annotations

from typing import Optional

import jax

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import passes, spec
from hrm_jax.models.recurrent import Recurrent


class RINS(Recurrent):

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    grads = None if bp_steps is None else truncation.trailing(c.L_cycles, c.L_bp_cycles)
    z = passes.repeat(self.L, self.z_L0(x_BxSxD), x_BxSxD, seq, c.L_cycles, grads)
    return self.H(z, seq)


def validate(c: ModelConfig) -> None:
  if not 0 <= c.L_bp_cycles <= c.L_cycles:
    raise c.invalid("L_bp_cycles", f"must be in [0, L_cycles={c.L_cycles}]")


SPEC = spec.ArchSpec(
    family="rins", core=RINS, stacks=("H", "L"),
    defaults=dict(half_layers=True, L_cycles=7, L_bp_cycles=4),
    passes=lambda c, bp: {"L": (c.L_cycles, c.L_cycles if bp is None else c.L_bp_cycles),
                          "H": (1, 1)},
    validate=validate)
