"""What the rest of the library needs to know about an architecture, declared by its model file.

Each model file (hrm.py, trm.py, ...) ends with a `SPEC`; `hrm_jax.models.registry` maps arch
names to them. config, flops, the bp_steps schedule, decode and the tests' NumPy forward read
an architecture only through its spec, so adding one is its model file, one registry line and
its test (docs/architectures.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn

from hrm_jax.config import ModelConfig

# stack name -> (passes per forward, passes that carry gradient at a bp_steps).
Passes = dict[str, tuple[int, int]]


def invalid_option(options: Any, field: str, why: str) -> ValueError:
  """The error for a bad value of an arch option, naming it."""
  return ValueError(f"ModelConfig.options.{field}={getattr(options, field)!r} "
                    f"({type(options).__module__.rsplit('.', 1)[-1]}): {why}")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """One architecture.

  family: the model file, which the tests' NumPy forward is keyed by.
  core: the Flax module from embedding to final state, `core(config, execution)(x, seq,
    bp_steps, cache) -> (z, cache)`.
  stacks: its stacks' module names ("H" takes `ModelConfig.H_override`).
  defaults: ModelConfig fields the presets set for it (the reference's config file), its
    `options` among them.
  options: the frozen dataclass of the options only this arch reads (`ModelConfig.options`;
    its __post_init__ checks them against the config's other fields via `check`), or None.
  passes: per stack (by module name), passes per forward and passes with gradient at
    `bp_steps` (None = every pass); the FLOP count (`hrm_jax.flops`) is built on it.
  warmup: bp_steps follows training's warm-up schedule (`hrm_jax.train.bp_schedule`), at
    least `min_bp_steps`; otherwise the gradient windows are fixed by the options and their
    gradient passes are the bp_steps used.
  kv_cache: whether KV-cache decoding serves it (each pass owns its cache slots); otherwise
    generation recomputes the row (`hrm_jax.recompute_decode`).
  """

  family: str
  core: type[nn.Module]
  stacks: tuple[str, ...]
  defaults: dict[str, Any]
  passes: Callable[[ModelConfig, Optional[int]], Passes]
  options: Optional[type] = None
  warmup: bool = False
  min_bp_steps: int = 1
  kv_cache: bool = True

  def with_defaults(self, **defaults: Any) -> "ArchSpec":
    """The same model under other preset defaults (e.g. trm_match_recurrence)."""
    return dataclasses.replace(self, defaults={**self.defaults, **defaults})
