"""RINS baseline: recurse the L stack on the input, then read out once with H.

    z = z_L_init;  repeat L_cycles:  z = L(z + x);   return H(z)   (no injection into H)

Only the last `Options.L_bp_cycles` L passes carry gradient when truncation is on.
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
  """rins's trailing L cycles with gradient."""

  L_bp_cycles: int = 4

  def check(self, c: ModelConfig) -> None:
    if not 0 <= self.L_bp_cycles <= c.L_cycles:
      raise spec.invalid_option(self, "L_bp_cycles", f"must be in [0, L_cycles={c.L_cycles}]")


class RINS(Recurrent):

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, bp_steps: Optional[int] = None,
               cache: passes.Cache = None) -> tuple[jax.Array, passes.Cache]:
    c = self.config
    grads = (None if bp_steps is None
             else truncation.trailing(c.L_cycles, c.options.L_bp_cycles))
    z, cache = passes.repeat(self.L, self.z_L0(x_BxSxD), x_BxSxD, seq, c.L_cycles, grads,
                             cache)
    return passes.one_pass(self.H, z, None, seq, cache=cache)


SPEC = spec.ArchSpec(
    family="rins", core=RINS, stacks=("H", "L"),
    defaults=dict(half_layers=True, L_cycles=7, options=Options(L_bp_cycles=4)),
    passes=lambda c, bp: {"L": (c.L_cycles, c.L_cycles if bp is None else c.options.L_bp_cycles),
                          "H": (1, 1)},
    options=Options)
