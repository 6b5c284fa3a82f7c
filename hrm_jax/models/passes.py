"""Applying a stack repeatedly with shared parameters, each pass with or without gradient.

Every recurrent model is built from `repeat`: passes `z = stack(z + injection)`, scanned
(`jax.lax.scan` via `nn.scan`). Gradient flags are static (`hrm_jax.truncation`), so the
passes are split into runs of equal flags, one scan each. A gradient-free run sees its
inputs through `stop_gradient` and returns `stop_gradient` of its output:
its compiled backward saves no activation and does no work. Nothing selects a branch on a
traced flag: linearising such a `cond` keeps the gradient branch's residuals for every pass.

Decoding threads the KV cache (`hrm_jax.kv_cache.Cache`) through the same functions: a pass
reads and returns the slots at its address (stack name, pass index), the index computed
from the loop indices of the recursion, never from the order of calls.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import kv_cache, truncation
from hrm_jax.layers import SeqInfo

# Collections shared (not scanned) by every pass: weights and the fixed buffers (z_L_init).
BROADCAST = ("params", "buffers")
Cache = Optional[kv_cache.Cache]


def scan_passes(body: Callable, module: nn.Module, carry, n: int, seq: SeqInfo,
                start: int = 0):
  """n passes carry = body(module, carry, i), i = start .. start + n - 1, sharing `module`'s
  parameters; the final carry.

  One pass is a plain call; more are an `nn.scan` (i traced), unrolled for small models on
  CPU (`Execution.unrolled`). When decoding (`seq.step` set) it is a Python loop with static
  i: every pass then addresses its own cache slots (separate arrays, written in place by the
  decode loop), and a decode step is a few tiny ops per layer, where loop overhead would
  dominate.
  """
  if n == 1 or seq.step is not None:
    for i in range(start, start + n):
      carry = body(module, carry, i)
    return carry
  ex = module.execution
  scan = nn.scan(lambda m, c, i: (body(m, c, i), None), variable_broadcast=BROADCAST,
                 split_rngs={"params": False}, length=n,
                 unroll=n if ex.unrolled(module.config.hidden_size) else 1)
  carry, _ = scan(module, carry, jnp.arange(start, start + n))
  return carry


def one_pass(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
             seq: SeqInfo, grad: bool = True, cache: Cache = None, index=0
             ) -> tuple[jax.Array, Cache]:
  """stack(z + injection); without gradient, as if its output were stop_gradient'ed.
  Decoding: pass `index` of `stack` reads and writes cache[(stack.name, index)]."""
  key = (stack.name, index)
  kvs = None if cache is None else cache[key]
  if grad:
    z_BxSxD, kvs = stack(z_BxSxD if injection_BxSxD is None else z_BxSxD + injection_BxSxD,
                         seq, kvs)
  else:
    z_BxSxD = jax.lax.stop_gradient(z_BxSxD)
    if injection_BxSxD is not None:
      z_BxSxD = z_BxSxD + jax.lax.stop_gradient(injection_BxSxD)
    z_BxSxD, kvs = stack(z_BxSxD, seq, kvs)
    z_BxSxD = jax.lax.stop_gradient(z_BxSxD)
  return z_BxSxD, (None if cache is None else {**cache, key: kvs})


def repeat(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
           seq: SeqInfo, n: int, grads: Optional[np.ndarray] = None, cache: Cache = None,
           first=0) -> tuple[jax.Array, Cache]:
  """n passes z = stack(z + injection) with shared parameters, numbered first .. first + n
  - 1; grads: static [n] bool, or None for gradient through every pass."""
  grads = np.ones(n, bool) if grads is None else grads
  done = 0
  for count, grad in truncation.runs(grads):
    def body(m, carry, k, grad=grad):
      return one_pass(m, carry[0], injection_BxSxD, seq, grad, carry[1], first + k)

    z_BxSxD, cache = scan_passes(body, stack, (z_BxSxD, cache), count, seq, done)
    done += count
  return z_BxSxD, cache
