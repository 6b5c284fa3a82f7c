"""Applying a stack repeatedly with shared parameters, each pass optionally gradient-free.

Every recurrent model is built from `repeat`: a `jax.lax.scan` (via `nn.scan`) over passes
`z = stack(z + injection)`. A pass whose flag is False returns `stop_gradient` of its output;
when flags differ between passes they are scanned over and selected with `nn.cond`, so a
gradient-free pass costs no backward computation.
"""

from __future__ import annotations

from typing import Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.layers import CACHE, CURSOR, SeqInfo

# Collections shared (not scanned) by every pass: weights and the fixed buffers (z_L_init).
BROADCAST = ("params", "buffers")
# Collections carried from pass to pass: the KV cache (one slot per pass and layer) and its
# cursor. Carried, not scanned, so decoding updates the cache in place.
CARRY = [CACHE, CURSOR]


def unroll(seq: SeqInfo, n: int, config_unroll: bool) -> int:
  """Scan unrolling for n iterations: full when decoding, where a step is a few tiny ops
  per layer and loop overhead would dominate, or when the config asks (`unroll_scans`, small
  models); else none (compile time and memory of big models)."""
  return n if seq.cache is not None or config_unroll else 1

Flags = Union[None, np.ndarray, jax.Array]  # None = every pass has gradient


def _apply(stack: nn.Module, z: jax.Array, injection: Optional[jax.Array],
           seq: SeqInfo) -> jax.Array:
  return stack(z if injection is None else z + injection, seq)


def one_pass(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
             seq: SeqInfo, grad: Union[None, bool, np.bool_, jax.Array] = None) -> jax.Array:
  """stack(z + injection); with grad False (static or traced) its output is stop_gradient."""
  if grad is None or (isinstance(grad, (bool, np.bool_)) and grad):
    return _apply(stack, z_BxSxD, injection_BxSxD, seq)
  if isinstance(grad, (bool, np.bool_)):
    return jax.lax.stop_gradient(_apply(stack, z_BxSxD, injection_BxSxD, seq))
  return nn.cond(
      grad,
      lambda m, z, inj: _apply(m, z, inj, seq),
      lambda m, z, inj: jax.lax.stop_gradient(_apply(m, z, inj, seq)),
      stack, z_BxSxD, injection_BxSxD)


def repeat(stack: nn.Module, z_BxSxD: jax.Array, injection_BxSxD: Optional[jax.Array],
           seq: SeqInfo, n: int, grads: Flags = None) -> jax.Array:
  """n passes z = stack(z + injection) with shared parameters; grads: [n] bool or None."""
  static = grads is None or isinstance(grads, np.ndarray)
  if static and (grads is None or grads.all()):
    body = lambda m, z, _: (_apply(m, z, injection_BxSxD, seq), None)
    xs = None
  elif static and not grads.any():
    body = lambda m, z, _: (jax.lax.stop_gradient(_apply(m, z, injection_BxSxD, seq)), None)
    xs = None
  else:
    body = lambda m, z, g: (one_pass(m, z, injection_BxSxD, seq, g), None)
    xs = jnp.asarray(grads)
  scan = nn.scan(body, variable_broadcast=BROADCAST, variable_carry=CARRY,
                 split_rngs={"params": False}, length=n,
                 unroll=unroll(seq, n, stack.config.unroll_scans))
  z_BxSxD, _ = scan(stack, z_BxSxD, xs)
  return z_BxSxD
