"""Truncated backpropagation: which recurrent passes carry gradient, and its warm-up.

A pass without gradient behaves like `stop_gradient` on its output: nothing flows back
through it, not even into its inputs. Flags are NumPy arrays computed from static integers,
so each `bp_steps` value is one compiled variant of the model, and the models split their
passes into static runs of equal flags (`runs`, `hl_segments`): no flag is ever traced.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hrm_jax.config import ModelConfig


def trailing(n: int, n_grad: int) -> np.ndarray:
  """[n] bool: only the last `n_grad` of `n` passes carry gradient."""
  return np.arange(n) >= n - n_grad


def hl_grad_flags(H_cycles: int, L_cycles: int, H_bp: int,
                  L_bp: int) -> tuple[np.ndarray, np.ndarray]:
  """(L flags [H_cycles, L_cycles], H flags [H_cycles]) for given gradient windows.

  L passes are numbered in execution order k = 0 .. H*L-1; pass k has gradient iff
  k >= H*L - L_bp. H pass i has gradient iff i >= H - H_bp.
  """
  L_grad = trailing(H_cycles * L_cycles, L_bp).reshape(H_cycles, L_cycles)
  return L_grad, trailing(H_cycles, H_bp)


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


def hrm_bp_split(H_cycles: int, bp_steps: int) -> tuple[int, int]:
  """The reference's split of bp_steps: H first (at most bp_steps - 1), the rest to L."""
  H_bp = min(H_cycles, bp_steps - 1)
  return H_bp, bp_steps - H_bp


def check_bp_steps(bp_steps: Optional[int]) -> None:
  if bp_steps is None:
    return
  if not isinstance(bp_steps, (int, np.integer)) or isinstance(bp_steps, bool):
    raise TypeError(
        f"bp_steps must be None or a static Python int, got {type(bp_steps).__name__} "
        "(under jax.jit, pass it as a static argument)")
  if bp_steps < 1:
    raise ValueError(f"bp_steps must be >= 1 or None, got {bp_steps}")


def bp_steps_at(step: int, total_steps: int, config: ModelConfig) -> int:
  """bp_steps to train with at `step`.

  hrm: bp_min + int(progress * (bp_max - bp_min)), progress = min(1, step / (total_steps *
  bp_warmup_ratio)); a ratio of 0 (SFT) means bp_max from the first step. The baselines
  have fixed gradient windows in their config; for them this returns the number of passes
  that carry gradient (any int switches their truncation on).
  """
  c = config
  if c.family == "hrm":
    warmup = total_steps * c.bp_warmup_ratio
    progress = 1.0 if warmup <= 0 else min(1.0, step / warmup)
    return c.bp_min_steps + int(progress * (c.bp_max_steps - c.bp_min_steps))
  if c.family == "trm":
    return c.H_bp_steps + c.L_bp_steps
  if c.family == "rins":
    return c.L_bp_cycles + 1
  if c.family == "ut":
    return c.bp_cycles
  return 1
