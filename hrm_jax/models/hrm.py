"""HRM: the H/L recursion, and which of its passes carry gradient (docs/reference.md#recurrence).

    z_H = embed(tokens);  z_L = z_L_init
    for i in range(H_cycles):
        for j in range(L_cycles):
            z_L = L(z_L + z_H)      gradient iff L pass i*L_cycles + j is among the last L_bp
        z_H = H(z_H + z_L)          gradient iff i is among the last H_bp cycles
    return z_H

with H_bp = min(H_cycles, bp_steps - 1) and L_bp = bp_steps - H_bp (`grad_flags`); bp_steps
None = gradient through every pass. Training warms `bp_steps` up (`hrm_jax.train.bp_schedule`).
A pass without gradient is as if its output were stop_gradient'ed.

Mechanism (`hrm_jax.models.passes`): the flags are static, so H cycles with equal flags run
as one scan (`nn.scan`, shared parameters) and, within a cycle, each run of L passes with
equal flags as one scan: gradient-free passes keep nothing for the backward pass. With a KV
cache the same passes run as Python loops, H pass i and L pass i * L_cycles + j each with its
own cache slots (`hrm_jax.decode`).
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from hrm_jax import truncation
from hrm_jax.config import ModelConfig
from hrm_jax.layers import SeqInfo
from hrm_jax.models import passes, spec
from hrm_jax.models.recurrent import Recurrent

Flags = tuple[np.ndarray, np.ndarray]  # (L flags [H_cycles, L_cycles], H flags [H_cycles])


def bp_split(H_cycles: int, bp_steps: int) -> tuple[int, int]:
  """The reference's split of bp_steps: H first (at most bp_steps - 1), the rest to L."""
  H_bp = min(H_cycles, bp_steps - 1)
  return H_bp, bp_steps - H_bp


def window_flags(H_cycles: int, L_cycles: int, H_bp: int, L_bp: int) -> Flags:
  """Gradient on by pass index: H pass i iff i >= H_cycles - H_bp; L pass (i, j), number
  k = i * L_cycles + j in execution order, iff k >= H_cycles * L_cycles - L_bp."""
  L_index = np.arange(H_cycles * L_cycles).reshape(H_cycles, L_cycles)
  return L_index >= L_index.size - L_bp, np.arange(H_cycles) >= H_cycles - H_bp


def grad_flags(c: ModelConfig, bp_steps: Optional[int]) -> Flags:
  """Which passes carry gradient at bp_steps (None: all)."""
  if bp_steps is None:
    return np.ones((c.H_cycles, c.L_cycles), bool), np.ones(c.H_cycles, bool)
  return window_flags(c.H_cycles, c.L_cycles, *bp_split(c.H_cycles, bp_steps))


def hl_recursion(module: nn.Module, H: Callable, L: Callable, z_H: jax.Array, z_L: jax.Array,
                 seq: SeqInfo, L_cycles: int, grads: Flags, cache: passes.Cache = None
                 ) -> tuple[jax.Array, passes.Cache]:
  """The loop above with static gradient flags `grads`; the final z_H [B, S, D] (and the
  updated KV cache when decoding).

  `module` owns both stacks (it is what the cycle scan lifts); H and L map it to the stack
  to use, so TRM can pass the same stack twice.
  """
  start = 0
  for cycles, L_grads, H_grad in truncation.hl_segments(*grads):  # H cycles alike, in order
    def cycle(mdl, carry, i, L_grads=L_grads, H_grad=H_grad):  # i: the H cycle
      z_H, z_L, cache = carry
      # z_L = L(z_L + z_H), L_cycles times; then z_H = H(z_H + z_L)
      z_L, cache = passes.repeat(L(mdl), z_L, z_H, seq, L_cycles, L_grads, cache,
                                 first=i * L_cycles)
      z_H, cache = passes.one_pass(H(mdl), z_H, z_L, seq, H_grad, cache, index=i)
      return z_H, z_L, cache

    z_H, z_L, cache = passes.scan_passes(cycle, module, (z_H, z_L, cache), cycles, seq, start)
    start += cycles
  return z_H, cache


class HRM(Recurrent):
  """Two stacks, H (slow) and L (fast), each of layers_per_stack layers."""

  def __call__(self, x_BxSxD: jax.Array, seq: SeqInfo, bp_steps: Optional[int] = None,
               cache: passes.Cache = None) -> tuple[jax.Array, passes.Cache]:
    c = self.config
    return hl_recursion(self, lambda m: m.H, lambda m: m.L, x_BxSxD, self.z_L0(x_BxSxD), seq,
                        c.L_cycles, grad_flags(c, bp_steps), cache)


def hl_passes(grads: Flags) -> spec.Passes:
  L_grad, H_grad = grads
  return {"H": (H_grad.size, int(H_grad.sum())), "L": (L_grad.size, int(L_grad.sum()))}


# bp_steps 1 would leave the H stack without gradient: one H pass and at least one L pass.
SPEC = spec.ArchSpec(
    family="hrm", core=HRM, stacks=("H", "L"),
    defaults=dict(half_layers=True, H_cycles=2, L_cycles=3),
    passes=lambda c, bp_steps: hl_passes(grad_flags(c, bp_steps)),
    warmup=True, min_bp_steps=2)
