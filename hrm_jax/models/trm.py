"""TRM baseline: the H/L recursion with ONE stack playing both roles.

    z_L = S(z_L + z_H)  (L_cycles times), then  z_H = S(z_H + z_L),  H_cycles times.

Gradient windows are fixed by its `Options` (H_bp_steps trailing H passes, L_bp_steps
trailing L passes); `trm_match_recurrence` is this model with half the layers and H2 L3.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import passes, spec
from hrm_jax.models.hrm import Flags, hl_passes, hl_recursion, window_flags
from hrm_jax.models.recurrent import Recurrent


@dataclasses.dataclass(frozen=True)
class Options:
  """trm's fixed gradient windows: trailing H passes and trailing L passes with gradient."""

  H_bp_steps: int = 1
  L_bp_steps: int = 1

  def check(self, c: ModelConfig) -> None:
    if not 0 <= self.H_bp_steps <= c.H_cycles:
      raise spec.invalid_option(self, "H_bp_steps", f"must be in [0, H_cycles={c.H_cycles}]")
    if not 0 <= self.L_bp_steps <= c.H_cycles * c.L_cycles:
      raise spec.invalid_option(self, "L_bp_steps", "must be in [0, H_cycles*L_cycles="
                                f"{c.H_cycles * c.L_cycles}]")


def grad_flags(c: ModelConfig, bp_steps: Optional[int]) -> Flags:
  if bp_steps is None:
    return np.ones((c.H_cycles, c.L_cycles), bool), np.ones(c.H_cycles, bool)
  return window_flags(c.H_cycles, c.L_cycles, c.options.H_bp_steps, c.options.L_bp_steps)


class TRM(Recurrent):
  STACKS = ("L",)

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, bp_steps: Optional[int] = None,
               cache: passes.Cache = None) -> tuple[jax.Array, passes.Cache]:
    c = self.config
    stack = lambda m: m.L
    return hl_recursion(self, stack, stack, x_BxSxD, self.z_L0(x_BxSxD), seq, c.L_cycles,
                        grad_flags(c, bp_steps), cache)


def pass_counts(c: ModelConfig, bp_steps: Optional[int]) -> spec.Passes:
  counts = hl_passes(grad_flags(c, bp_steps))
  return {"L": tuple(h + l for h, l in zip(counts["H"], counts["L"]))}


# One stack plays H and L, so its H and L passes would share the stack's KV-cache addresses:
# generation recomputes the row instead.
SPEC = spec.ArchSpec(
    family="trm", core=TRM, stacks=("L",),
    defaults=dict(half_layers=False, H_cycles=2, L_cycles=1, options=Options()),
    passes=pass_counts, options=Options, kv_cache=False)
