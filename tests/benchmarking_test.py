"""The benchmarks' shared measurements: the matmul floor finds every dot of a program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import benchmarking


def test_dots_of_counts_forward_backward_and_scan_trips():
  def loss(x_BxD, w_LxDxD):
    def layer(h, w):
      return jnp.tanh(h @ w), None
    return jax.lax.scan(jax.checkpoint(layer), x_BxD, w_LxDxD)[0].sum()

  step = jax.jit(jax.grad(loss, argnums=1))
  x, w = jnp.ones((4, 8)), jnp.ones((3, 8, 16 // 2))
  dots = benchmarking.dots_of(step, x, w)
  # per layer: forward, its rematerialised copy, and the two transposed dots (dx, dw)
  assert sum(d.count for d in dots) == 3 * 4
  assert sum(d.flops for d in dots) == 3 * 4 * 2 * 4 * 8 * 8
  run, args = benchmarking.dots_program(dots)
  outs = run(*args)
  assert len(outs) == 12
  for out, (a, b), d in zip(outs, args[0], [d for d in dots for _ in range(d.count)]):
    np.testing.assert_allclose(out, jax.lax.dot_general(a, b, **dict(d.params)), rtol=1e-6)


def test_dots_of_refuses_loops_of_unknown_length():
  f = jax.jit(lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ c, x))
  with pytest.raises(ValueError, match="while has no static trip count"):
    benchmarking.dots_of(f, jnp.ones((2, 2)))
