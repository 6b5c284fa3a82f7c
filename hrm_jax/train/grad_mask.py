"""Which parameter tensors a compiled training step differentiates.

The reference skips, in its optimizer, every parameter whose `grad is None`: one that no
gradient-carrying computation reached (the token embedding feeds only gradient-free passes
at bp_steps 2, and always in trm). The JAX equivalent is structural too: a parameter whose
tangent cannot reach the loss. We find it once per compiled step, at trace time, from the
jaxpr of the loss's JVP after dead-code elimination: a tangent input that survives is one
the loss depends on. Nothing compares gradient values with zero, so a gradient that happens
to be 0.0 is still a gradient, as in the reference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
# JAX's own dead-code elimination, which understands scans, remat and nested jits; there is
# no public entry point for it (jax.extend.core has the jaxpr types, not the pass).
from jax._src.interpreters import partial_eval as pe


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def has_grad(loss_fn: Callable[..., jax.Array], params: Any, *args: Any) -> Any:
  """Static tree of bools like params: True where loss_fn(params, *args) (a scalar) depends
  differentiably on that tensor. Traces loss_fn abstractly; args may be arrays or tracers."""
  jvp = lambda p, t, *a: jax.jvp(lambda q: loss_fn(q, *a), (p,), (t,))[1]
  closed = jax.make_jaxpr(jvp)(_abstract(params), _abstract(params), *_abstract(args))
  _, used = pe.dce_jaxpr(closed.jaxpr, [True])
  leaves, treedef = jax.tree.flatten(params)
  tangents = used[len(leaves):2 * len(leaves)]
  return jax.tree.unflatten(treedef, [bool(u) for u in tangents])
