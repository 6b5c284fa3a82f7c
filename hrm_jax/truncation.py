"""Truncated backpropagation's mechanics: static gradient flags, grouped into runs.

A pass without gradient behaves like `stop_gradient` on its output: nothing flows back
through it, not even into its inputs. Flags are NumPy arrays computed from static integers,
so each `bp_steps` value is one compiled variant of the model, and the models split their
passes into static runs of equal flags (`runs`, `hl_segments`): no flag is ever traced.
Which passes carry gradient for a bp_steps is each model's rule (e.g. `models/hrm.py`); the
bp_steps schedule is training's (`hrm_jax.train.bp_schedule`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def trailing(n: int, n_grad: int) -> np.ndarray:
  """[n] bool: only the last `n_grad` of `n` passes carry gradient."""
  return np.arange(n) >= n - n_grad


def runs(flags: np.ndarray) -> list[tuple[int, bool]]:
  """Run-length encoding of [n] bool flags: [(count, flag), ...] in order."""
  out: list[tuple[int, bool]] = []
  for f in np.asarray(flags, bool).tolist():
    if out and out[-1][1] == f:
      out[-1] = (out[-1][0] + 1, f)
    else:
      out.append((1, f))
  return out


def hl_segments(L_grad_HxL: np.ndarray,
                H_grad_H: np.ndarray) -> list[tuple[int, np.ndarray, bool]]:
  """Consecutive H cycles with equal flags, grouped in order: [(cycles, L flags [L_cycles],
  H flag), ...].

  With trailing windows there are at most four groups (gradient-free cycles, the cycle where
  the L window starts, the one where the H window starts, cycles with gradient throughout).
  """
  out: list[tuple[int, np.ndarray, bool]] = []
  for L_flags, H_flag in zip(np.asarray(L_grad_HxL, bool), np.asarray(H_grad_H, bool)):
    if out and np.array_equal(out[-1][1], L_flags) and out[-1][2] == H_flag:
      out[-1] = (out[-1][0] + 1, out[-1][1], out[-1][2])
    else:
      out.append((1, L_flags, bool(H_flag)))
  return out


def check_bp_steps(bp_steps: Optional[int]) -> None:
  if bp_steps is None:
    return
  if not isinstance(bp_steps, (int, np.integer)) or isinstance(bp_steps, bool):
    raise TypeError(
        f"bp_steps must be None or a static Python int, got {type(bp_steps).__name__} "
        "(under jax.jit, pass it as a static argument)")
  if bp_steps < 1:
    raise ValueError(f"bp_steps must be >= 1 or None, got {bp_steps}")
