"""The bp_steps warm-up of training: how many trailing passes carry gradient at each step.

HRM trains with a truncated backward whose window grows from `min_steps` to `max_steps`
passes over the first `warmup_ratio` of training (the reference's bp_steps warm-up); archs
with fixed gradient windows (their options, e.g. trm's H_bp_steps) use those instead. The
training config's `train.bp_min_steps`, `train.bp_max_steps`, `train.bp_warmup_ratio` set it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hrm_jax.config import ModelConfig
from hrm_jax.models.registry import spec_of


@dataclasses.dataclass(frozen=True)
class BpSchedule:
  min_steps: int = 2
  max_steps: int = 5
  warmup_ratio: float = 0.2  # 0 (SFT): max_steps from the first step

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.max_steps:
      raise ValueError(f"bp_steps warm-up: need 1 <= bp_min_steps ({self.min_steps}) <= "
                       f"bp_max_steps ({self.max_steps})")
    if not 0.0 <= self.warmup_ratio <= 1.0:
      raise ValueError(f"bp_steps warm-up: bp_warmup_ratio={self.warmup_ratio!r} must be in "
                       "[0, 1]")

  @classmethod
  def of(cls, train_cfg: Any) -> "BpSchedule":
    """The schedule of a training config's `train` section."""
    return cls(train_cfg.bp_min_steps, train_cfg.bp_max_steps, train_cfg.bp_warmup_ratio)


def bp_steps_at(step: int, total_steps: int, config: ModelConfig,
                schedule: BpSchedule = BpSchedule()) -> int:
  """bp_steps to train with at `step`: for archs that warm up (hrm), min + int(progress *
  (max - min)) with progress = min(1, step / (total_steps * warmup_ratio)); for fixed
  gradient windows the number of passes that carry gradient (any int switches their
  truncation on)."""
  spec = spec_of(config)
  if not spec.warmup:
    return sum(grad for _, grad in spec.passes(config, 1).values())
  if schedule.min_steps < spec.min_bp_steps:
    raise ValueError(f"bp_min_steps={schedule.min_steps}: arch {config.arch!r} needs >= "
                     f"{spec.min_bp_steps}")
  warmup = total_steps * schedule.warmup_ratio
  progress = 1.0 if warmup <= 0 else min(1.0, step / warmup)
  return schedule.min_steps + int(progress * (schedule.max_steps - schedule.min_steps))
