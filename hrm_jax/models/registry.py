"""The architectures by name: the one place that lists them.

Each model file declares its `SPEC` (`hrm_jax.models.spec.ArchSpec`); config presets,
FLOPs, the bp_steps schedule, decoding and the tests look an arch up here. It lives above
the model files (it imports them) and below everything that dispatches on an arch; the
generic `ModelConfig` (hrm_jax.config) stays below the models, which import it, so config
validation of arch-specific fields happens here (`spec_of`), at every use of a config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from hrm_jax.config import SIZES, ModelConfig
from hrm_jax.models import hrm, rins, transformer, trm, ut
from hrm_jax.models.spec import ArchSpec

REGISTRY: dict[str, ArchSpec] = {
    "hrm": hrm.SPEC,
    "transformer": transformer.SPEC,
    "trm": trm.SPEC,
    "trm_match_recurrence": trm.SPEC.with_defaults(half_layers=True, H_cycles=2, L_cycles=3,
                                                   H_bp_steps=2, L_bp_steps=3),
    "rins": rins.SPEC,
    "ut": ut.SPEC,
}
ARCHS = tuple(REGISTRY)


def spec_of(config: ModelConfig) -> ArchSpec:
  """The spec of config.arch, after checking the fields only this arch reads."""
  spec = REGISTRY.get(config.arch)
  if spec is None:
    raise config.invalid("arch", f"unknown architecture; expected one of {ARCHS}")
  if config.H_override and "H" not in spec.stacks:
    raise config.invalid("H_override", f"arch {config.arch!r} has no separate H stack "
                         f"(its stacks: {spec.stacks})")
  spec.validate(config)
  return spec


def model_config(size: str = "XL", arch: str = "hrm", **overrides: Any) -> ModelConfig:
  """A config from the reference presets: `size` in SIZES, `arch` in ARCHS, then overrides."""
  if size not in SIZES:
    raise ValueError(f"model_config: unknown size {size!r}; expected one of {tuple(SIZES)}")
  if arch not in REGISTRY:
    raise ValueError(f"model_config: unknown arch {arch!r}; expected one of {ARCHS}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(
        f"model_config: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
  n_layers, hidden, heads = SIZES[size]
  kwargs: dict[str, Any] = dict(arch=arch, n_layers=n_layers, hidden_size=hidden,
                                num_heads=heads)
  kwargs.update(REGISTRY[arch].defaults)
  kwargs.update(overrides)
  config = ModelConfig(**kwargs)
  spec_of(config)
  return config


def model_config_of_section(section: Mapping[str, Any], vocab_size: int) -> ModelConfig:
  """A config from a training config's `model` section: its preset `size` and `arch`, then
  every field it sets (None = the preset's), the data's `vocab_size` unless it sets one."""
  m = dict(section)
  size, arch = m.pop("size"), m.pop("arch")
  overrides = {k: v for k, v in m.items() if v is not None}
  overrides.setdefault("vocab_size", vocab_size)
  return model_config(size, arch, **overrides)


def bp_steps_at(step: int, total_steps: int, config: ModelConfig) -> int:
  """bp_steps to train with at `step`: the arch's warm-up schedule (hrm: bp_min_steps ->
  bp_max_steps over bp_warmup_ratio of training), or for fixed gradient windows the number
  of passes that carry gradient (any int switches their truncation on)."""
  spec = spec_of(config)
  if spec.bp_warmup is not None:
    return spec.bp_warmup(step, total_steps, config)
  return sum(grad for _, grad in spec.passes(config, 1).values())
