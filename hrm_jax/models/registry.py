"""The architectures by name: the one place that lists them.

Each model file declares its `SPEC` (`hrm_jax.models.spec.ArchSpec`) and, if it has options
of its own, their frozen dataclass; config presets, FLOPs, the bp_steps schedule, decoding and
the tests look an arch up here. It lives above the model files (it imports them) and below
everything that dispatches on an arch; the generic `ModelConfig` (hrm_jax.config) stays below
the models, which import it, so the arch and its options are checked here (`spec_of`), at
every use of a config. Configs saved before the options and the execution settings left
`ModelConfig` are read by `model_config_from_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from hrm_jax.config import SIZES, ModelConfig
from hrm_jax.execution import FIELDS as EXECUTION_FIELDS
from hrm_jax.execution import Execution
from hrm_jax.models import hrm, rins, transformer, trm, ut
from hrm_jax.models.spec import ArchSpec

REGISTRY: dict[str, ArchSpec] = {
    "hrm": hrm.SPEC,
    "transformer": transformer.SPEC,
    "trm": trm.SPEC,
    "trm_match_recurrence": trm.SPEC.with_defaults(
        half_layers=True, H_cycles=2, L_cycles=3, options=trm.Options(H_bp_steps=2, L_bp_steps=3)),
    "rins": rins.SPEC,
    "ut": ut.SPEC,
}
ARCHS = tuple(REGISTRY)
# Every arch option's name, over all archs (a training config's `model` section sets them).
OPTION_FIELDS = tuple(sorted({f.name for s in REGISTRY.values() if s.options
                              for f in dataclasses.fields(s.options)}))
# Flat ModelConfig fields of configs saved before issue 30 that are not architecture: the
# execution settings and the bp_steps warm-up (now the training config's).
LEGACY_SCHEDULE_FIELDS = ("bp_min_steps", "bp_max_steps", "bp_warmup_ratio")


def spec_of(config: ModelConfig) -> ArchSpec:
  """The spec of config.arch, after checking the fields only this arch reads."""
  spec = REGISTRY.get(config.arch)
  if spec is None:
    raise config.invalid("arch", f"unknown architecture; expected one of {ARCHS}")
  if config.H_override and "H" not in spec.stacks:
    raise config.invalid("H_override", f"arch {config.arch!r} has no separate H stack "
                         f"(its stacks: {spec.stacks})")
  if spec.options is None and config.options is not None:
    raise config.invalid("options", f"arch {config.arch!r} has no options")
  if spec.options is not None:
    if type(config.options) is not spec.options:
      raise config.invalid("options", f"arch {config.arch!r} takes a "
                           f"{spec.options.__module__}.{spec.options.__qualname__}")
    config.options.check(config)
  return spec


def with_options(config: ModelConfig, **changes: Any) -> ModelConfig:
  """`config` with some of its arch options changed (`dataclasses.replace`)."""
  config = config.replace(options=dataclasses.replace(config.options, **changes))
  spec_of(config)
  return config


def model_config(size: str = "XL", arch: str = "hrm", **overrides: Any) -> ModelConfig:
  """A config from the reference presets: `size` in SIZES, `arch` in ARCHS, then overrides:
  ModelConfig fields or the arch's option fields (e.g. ut's cycles=3)."""
  if size not in SIZES:
    raise ValueError(f"model_config: unknown size {size!r}; expected one of {tuple(SIZES)}")
  if arch not in REGISTRY:
    raise ValueError(f"model_config: unknown arch {arch!r}; expected one of {ARCHS}")
  spec = REGISTRY[arch]
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  option_names = {f.name for f in dataclasses.fields(spec.options)} if spec.options else set()
  unknown = sorted(set(overrides) - fields - option_names)
  if unknown:
    raise ValueError(
        f"model_config: unknown field(s) {unknown} for arch {arch!r}; valid fields: "
        f"{sorted(fields)}, options: {sorted(option_names) or 'none'}")
  n_layers, hidden, heads = SIZES[size]
  kwargs: dict[str, Any] = dict(arch=arch, n_layers=n_layers, hidden_size=hidden,
                                num_heads=heads)
  kwargs.update(spec.defaults)
  kwargs.update({k: v for k, v in overrides.items() if k in fields})
  options = {k: v for k, v in overrides.items() if k in option_names}
  if options:
    kwargs["options"] = dataclasses.replace(kwargs["options"], **options)
  config = ModelConfig(**kwargs)
  spec_of(config)
  return config


def model_config_from_dict(saved: Mapping[str, Any]) -> ModelConfig:
  """The ModelConfig of `to_dict()`'s JSON, also of configs saved before issue 30 (one flat
  dict): their execution and warm-up fields are dropped (`execution_from_dict` reads the
  former), the arch's option fields go into `options`, other archs' are dropped."""
  d = dict(saved)
  arch = d.get("arch", "hrm")
  spec = REGISTRY.get(arch)
  if spec is None:
    raise ValueError(f"saved model config: unknown arch {arch!r}; expected one of {ARCHS}")
  for name in EXECUTION_FIELDS + LEGACY_SCHEDULE_FIELDS:
    d.pop(name, None)
  flat = {name: d.pop(name) for name in OPTION_FIELDS if name in d}
  options = d.get("options")
  if spec.options is not None:
    if isinstance(options, Mapping):
      d["options"] = spec.options(**options)
    elif options is None:  # saved flat: this arch's own fields, over the preset
      own = {f.name for f in dataclasses.fields(spec.options)}
      d["options"] = dataclasses.replace(spec.defaults["options"],
                                         **{k: v for k, v in flat.items() if k in own})
  config = ModelConfig(**d)
  spec_of(config)
  return config


def execution_from_dict(saved: Mapping[str, Any]) -> Execution:
  """The Execution of its `to_dict()` JSON, or of a flat ModelConfig saved before issue 30
  (its execution fields; other keys are ignored)."""
  return Execution(**{k: v for k, v in saved.items() if k in EXECUTION_FIELDS})


def model_config_of_section(section: Mapping[str, Any], vocab_size: int) -> ModelConfig:
  """A config from a training config's `model` section: its preset `size` and `arch`, then
  every model field and arch option it sets (None = the preset's), the data's `vocab_size`
  unless it sets one. Its execution settings are `execution_of_section`'s."""
  m = {k: v for k, v in section.items() if v is not None and k not in EXECUTION_FIELDS}
  size, arch = m.pop("size"), m.pop("arch")
  m.setdefault("vocab_size", vocab_size)
  return model_config(size, arch, **m)


def execution_of_section(section: Mapping[str, Any]) -> Execution:
  """The Execution a training config's `model` section sets (None = the default)."""
  return Execution(**{k: section[k] for k in EXECUTION_FIELDS if section.get(k) is not None})
