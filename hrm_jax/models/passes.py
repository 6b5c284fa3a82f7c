"""Applying a stack repeatedly with shared parameters, each pass with or without gradient.

Every recurrent model is built from `repeat`: passes `z = stack(z + injection)`, scanned
(`jax.lax.scan` via `nn.scan`). Gradient flags are static (`hrm_jax.truncation`), so the
passes are split into runs of equal flags, one scan each. A gradient-free run sees its
inputs through `stop_gradient` and returns `stop_gradient` of its output:
its compiled backward saves no activation and does no work. Nothing selects a branch on a
traced flag: linearising such a `cond` keeps the gradient branch's residuals for every pass.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from hrm_jax import truncation
from hrm_jax.layers import SeqInfo, unroll_scans

# Collections shared (not scanned) by every pass: weights and the fixed buffers (z_L_init).
BROADCAST = ("params", "buffers")


def scan_passes(body: Callable, module: nn.Module, carry, n: int, seq: SeqInfo):
  """n passes carry = body(module, carry) sharing `module`'s parameters; the final carry.

  One pass is a plain call; more are an `nn.scan`, unrolled for small models on CPU
  (`layers.unroll_scans`). When decoding with a KV cache it is a Python loop: every
  attention call then owns a static cache slot (its own array, updated in place by the
  decode loop; see `layers.Attention.cached`), and a decode step is a few tiny ops per
  layer, where loop overhead would dominate.
  """
  if n == 1 or seq.cache is not None:
    for _ in range(n):
      carry = body(module, carry)
    return carry
  scan = nn.scan(lambda m, c, _: (body(m, c), None), variable_broadcast=BROADCAST,
                 split_rngs={"params": False}, length=n,
                 unroll=n if unroll_scans(module.config) else 1)
  carry, _ = scan(module, carry, None)
  return carry


def one_pass(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
             seq: SeqInfo, grad: bool = True) -> jax.Array:
  """stack(z + injection); without gradient, as if its output were stop_gradient'ed."""
  if grad:
    return stack(z_BxSxD if injection_BxSxD is None else z_BxSxD + injection_BxSxD, seq)
  z_BxSxD = jax.lax.stop_gradient(z_BxSxD)
  if injection_BxSxD is not None:
    z_BxSxD = z_BxSxD + jax.lax.stop_gradient(injection_BxSxD)
  return jax.lax.stop_gradient(stack(z_BxSxD, seq))


def repeat(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
           seq: SeqInfo, n: int, grads: Optional[np.ndarray] = None) -> jax.Array:
  """n passes z = stack(z + injection) with shared parameters; grads: static [n] bool, or
  None for gradient through every pass."""
  grads = np.ones(n, bool) if grads is None else grads
  for count, grad in truncation.runs(grads):
    z_BxSxD = scan_passes(lambda m, z, g=grad: one_pass(m, z, injection_BxSxD, seq, g),
                          stack, z_BxSxD, count, seq)
  return z_BxSxD
