"""TRM baseline: the H/L recursion with ONE stack playing both roles.

    z_L = S(z_L + z_H)  (L_cycles times), then  z_H = S(z_H + z_L),  H_cycles times.

Gradient windows are fixed by the config (H_bp_steps trailing H passes, L_bp_steps
trailing L passes); `trm_match_recurrence` is this model with half the layers and H2 L3.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import spec
from hrm_jax.models.hrm import Flags, hl_passes, hl_recursion, window_flags
from hrm_jax.models.recurrent import Recurrent


def grad_flags(c: ModelConfig, bp_steps: Optional[int]) -> Flags:
  if bp_steps is None:
    return np.ones((c.H_cycles, c.L_cycles), bool), np.ones(c.H_cycles, bool)
  return window_flags(c.H_cycles, c.L_cycles, c.H_bp_steps, c.L_bp_steps)


class TRM(Recurrent):
  STACKS = ("L",)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo,
               bp_steps: Optional[int] = None) -> jax.Array:
    c = self.config
    stack = lambda m: m.L
    return hl_recursion(self, stack, stack, x_BxSxD, self.z_L0(x_BxSxD), seq, c.L_cycles,
                        grad_flags(c, bp_steps))


def passes(c: ModelConfig, bp_steps: Optional[int]) -> spec.Passes:
  counts = hl_passes(grad_flags(c, bp_steps))
  return {"L": tuple(h + l for h, l in zip(counts["H"], counts["L"]))}


def validate(c: ModelConfig) -> None:
  if not 0 <= c.H_bp_steps <= c.H_cycles:
    raise c.invalid("H_bp_steps", f"must be in [0, H_cycles={c.H_cycles}]")
  if not 0 <= c.L_bp_steps <= c.H_cycles * c.L_cycles:
    raise c.invalid("L_bp_steps", f"must be in [0, H_cycles*L_cycles={c.H_cycles * c.L_cycles}]")


# One stack plays H and L, so H and L passes would share KV-cache slots: generation
# recomputes the row instead.
SPEC = spec.ArchSpec(
    family="trm", core=TRM, stacks=("L",),
    defaults=dict(half_layers=False, H_cycles=2, L_cycles=1, H_bp_steps=1, L_bp_steps=1),
    passes=passes, validate=validate, kv_cache=False)
