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

from hrm_jax.layers import SeqInfo

# Collections shared (not scanned) by every pass: weights and the fixed buffers (z_L_init).
BROADCAST = ("params", "buffers")


def scan_passes(body, module: nn.Module, carry, xs, n: int, seq: SeqInfo):
  """`nn.scan` of body(module, carry, x) -> (carry, None) over n passes sharing parameters;
  returns the final carry.

  Unrolled when the config asks (`unroll_scans`, small models). When decoding with a KV
  cache it is a Python loop: every attention call then owns a static cache slot (its own
  array, updated in place by the decode loop; see `layers.Attention.cached`), and a decode
  step is a few tiny ops per layer, where loop overhead would dominate.
  """
  if seq.cache is not None:
    for i in range(n):
      carry, _ = body(module, carry, None if xs is None else jax.tree.map(lambda x: x[i], xs))
    return carry
  scan = nn.scan(body, variable_broadcast=BROADCAST, split_rngs={"params": False}, length=n,
                 unroll=n if module.config.unroll_scans else 1)
  carry, _ = scan(module, carry, xs)
  return carry

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
  return scan_passes(body, stack, z_BxSxD, xs, n, seq)
